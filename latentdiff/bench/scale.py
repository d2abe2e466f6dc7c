"""What gradient checkpointing costs and saves: the bench-L U-Net's training step with and without it.

``grad_checkpointing_memory()`` runs each measurement in a fresh Python process (so one setting's
freed memory cannot lower the other's peak) and returns their peak memory and training speed.

Peak memory on CPU is ``bench.timing.measure``'s: the process's peak resident set size (VmHWM, its
high-water mark reset through ``/proc/self/clear_refs`` and glibc's free lists trimmed first) during
the measured steps, minus the resident size just before them. The baseline is taken after the
network, its inputs and AdamW's moments exist (one warm-up step first), so the number is what a
training step adds: activations kept for the backward pass, gradients and temporaries. On CUDA it is
``max_memory_allocated`` above the allocation before the steps, the same way.

Speed is the median of ``repeats`` measurements of ``steps`` optimizer steps each (steps/s), the two
settings measured alternately.

``python -m latentdiff.bench.scale [--json PATH]`` prints (and writes) the dict.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from latentdiff.bench.networks import CONFIGS, latentdiff_side
from latentdiff.bench.tasks import train_task
from latentdiff.bench.timing import measure
from latentdiff.nn.blocks import set_grad_checkpointing


def measure_here(checkpointing: bool, repeats: int = 3, steps: int = 2, device: str = "cpu") -> dict:
    """In this process: bench-L's fp32 training step at its batch (16) with gradient checkpointing on
    or off -> {"peak_mib", "steps_per_s" (median), "steps_per_s_all", "blocks_checkpointed"}."""
    torch.manual_seed(0)
    dev = torch.device(device)
    side = latentdiff_side("L")
    side.net.to(dev)
    switched = set_grad_checkpointing(side.net, checkpointing)
    task = train_task(side, CONFIGS["L"], dev, bf16=False, channels_last=False, steps=steps)
    task.work()  # warm-up: AdamW's moments and the allocator's pools exist before the baseline
    peaks, rates = [], []
    for _ in range(repeats):
        seconds, peak = measure(task.work, dev)
        peaks.append(peak)
        rates.append(steps / seconds)
    return {"peak_mib": max(peaks), "steps_per_s": statistics.median(rates), "steps_per_s_all": rates,
            "blocks_checkpointed": switched if checkpointing else 0, "torch_threads": torch.get_num_threads()}


def _in_subprocess(checkpointing: bool, repeats: int, steps: int, device: str) -> dict:
    cmd = [sys.executable, "-m", "latentdiff.bench.scale", "--one", "on" if checkpointing else "off",
           "--repeats", str(repeats), "--steps", str(steps), "--device", device]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ}, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def grad_checkpointing_memory(repeats: int = 3, steps: int = 3, device: str = "cpu") -> dict:
    """The bench-L U-Net (``bench.networks.latentdiff_unet_config("L")``: 16x16x4 latents, transformer
    attention at 16 and 8 with cross-attention on (16, 384) text) trained at batch 16, fp32, with and
    without gradient checkpointing. Each of the ``repeats`` rounds measures both settings, each in a
    fresh process (on, then off), so that a busy machine slows both alike.

    Returns {"peak_mib_on", "peak_mib_off", "steps_per_s_on", "steps_per_s_off"} (the largest peak
    memory above the baseline after the model, inputs and optimizer state are built, see the module
    docstring; the median steps/s over the rounds) and, for the record, "memory_measure", "device",
    "batch", "repeats", "steps_per_measurement", "blocks_checkpointed", "torch_threads" and every
    measurement."""
    rounds = {"on": [], "off": []}
    for _ in range(repeats):
        for setting in ("on", "off"):
            rounds[setting].append(_in_subprocess(setting == "on", 1, steps, device))
    result = {}
    for setting, runs in rounds.items():
        result[f"peak_mib_{setting}"] = max(r["peak_mib"] for r in runs)
        result[f"steps_per_s_{setting}"] = statistics.median(r["steps_per_s"] for r in runs)
    for setting, runs in rounds.items():
        result[f"peak_mib_{setting}_all"] = [r["peak_mib"] for r in runs]
        result[f"steps_per_s_{setting}_all"] = [r["steps_per_s"] for r in runs]
    return {
        **result,
        "blocks_checkpointed": rounds["on"][0]["blocks_checkpointed"],
        "memory_measure": ("CPU: peak RSS (VmHWM after /proc/self/clear_refs) minus RSS before the steps, "
                           "one subprocess per measurement" if device == "cpu" else
                           "CUDA: max_memory_allocated minus memory_allocated before the steps"),
        "device": device,
        "batch": CONFIGS["L"].train_batch,
        "repeats": repeats,
        "steps_per_measurement": steps,
        "torch_threads": rounds["on"][0]["torch_threads"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", choices=["on", "off"], help="measure one setting in this process (internal)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_here(args.one == "on", args.repeats, args.steps, args.device)))
        return
    result = grad_checkpointing_memory(args.repeats, args.steps, args.device)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
