"""latentdiff vs diffusers on the same networks: training steps/s, forward, sampling, peak memory.

Configs bench-S and bench-L of DESIGN.md section 6 (``latentdiff/bench/networks.py``). Both
libraries run in this one process, alternating round by round; the table gives medians with
min-max over the rounds and the speed-up (diffusers time / latentdiff time: > 1 means latentdiff
is faster; the sampling target "<= 0.75x the wall time" is a speed-up >= 1.33).

    python benchmarks/unet_vs_diffusers.py --config S --json benchmarks/results/bench_S.json
    python benchmarks/unet_vs_diffusers.py --config L --device cuda --compile   # on a GPU
    python benchmarks/unet_vs_diffusers.py --config S --profile                 # top ops of both

``latentdiff bench`` runs the same code with a shorter default (fp32, two rounds, S and L).
"""

from __future__ import annotations

import argparse

from latentdiff.bench import add_arguments, run_from_args

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, configs="S", rounds=3, precision="fp32,bf16")
    run_from_args(parser.parse_args())
