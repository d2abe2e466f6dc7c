"""Density estimation on Fashion-MNIST (issue 26): bits/dim of three presets trained for the same wall
time, by the variational bound (all 10,000 test images where time allows) and by the probability-flow
ODE (a seeded subset), plus the PF-ODE's exactness on a Gaussian mixture with a closed-form density.

Each preset trains into ``RUNS/nll-PRESET`` (``latentdiff train --preset PRESET --minutes M``; a run
folder that has a checkpoint is reused, not retrained) and is evaluated by
``pipelines.likelihood.evaluate_nll``. Every (preset, method) result is kept in ``RUNS/nll-parts/``
so that the pieces can run as separate processes (``--only PRESET:METHOD``) and be assembled later;
a part is recomputed only with ``--redo``. ``--extra NAME=PRESET[:k=v,...]`` adds a run trained from a
preset with overrides (the ablation that isolates the learned variance: fmnist-iddpm with fixed variance).

    python benchmarks/likelihood.py --minutes 10 --vlb-n 10000 --ode-n 100 --tol 1e-3 \
        --json benchmarks/results/likelihood.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

PRESETS = ["fmnist-ddpm", "fmnist-ddpm-paper", "fmnist-iddpm"]


def run_stats(run: Path) -> dict:
    """train_minutes and steps from the run's last metrics line."""
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {"train_minutes": round(lines[-1]["minutes"], 2), "train_steps": lines[-1]["step"]}


def ensure_trained(name: str, preset: str, overrides: list[str], runs: Path, minutes: float) -> Path:
    run = runs / f"nll-{name}"
    if not (run / "checkpoint" / "config.json").exists():
        cmd = [sys.executable, "-m", "latentdiff.cli.main", "train", "--preset", preset, "--out", str(run),
               "--minutes", str(minutes)] + [a for o in overrides for a in ("--set", o)]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return run


def part(args, name: str, method: str, run: Path) -> dict:
    """One (run, method) result, cached in RUNS/nll-parts/NAME-METHOD.json."""
    from latentdiff.pipelines.likelihood import evaluate_nll

    path = args.runs_dir / "nll-parts" / f"{name}-{method}.json"
    if path.exists() and not args.redo:
        return json.loads(path.read_text())
    n = args.vlb_n if method == "vlb" else args.ode_n
    report = evaluate_nll(run / "checkpoint", (method,), n=n, seed=args.seed, n_t=args.n_t,
                          n_probes=args.probes, rtol=args.tol, atol=args.tol, ode_batch_size=args.ode_batch_size,
                          ode_max_minutes=args.ode_minutes, batch_size=args.vlb_batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return report


def rows_of(name: str, preset: str, method: str, report: dict, stats: dict) -> list[dict]:
    r = report[method]
    common = {"preset": preset, "run": name, "method": method, "n": r["n"], **stats,
              "covers": report["covers"], "condition": report["condition"]}
    if method == "ode":
        keep = ("rtol", "atol", "n_probes", "probe", "mean_nfe", "sigma_min", "sigma_max", "probe_stderr", "seconds")
        return [{**common, "bits_per_dim": r["bits_per_dim"], "stderr": r["stderr"],
                 **{k: r[k] for k in keep if k in r}}]
    return [{**common, "variance": v, "bits_per_dim": b["bits_per_dim"], "stderr": b["stderr"],
             "prior_bits_per_dim": b["prior_bits_per_dim"], "decoder_bits_per_dim": b["decoder_bits_per_dim"],
             "kl_bits_per_dim": b["kl_bits_per_dim"], "t_sampling": r["t_sampling"], "n_t": r["n_t"],
             "seconds": r["seconds"]} for v, b in r["by_variance"].items()]


def gmm_exactness(dim: int = 16, components: int = 8, n: int = 64, tol: float = 1e-8) -> dict:
    """PF-ODE log-likelihood (exact divergence, RK45 at rtol = atol = tol) of points of a GMM at the linear
    schedule's sigma_min, against the closed form; with the exact prior at sigma_max (the solver's error
    alone) and with the VP prior N(0, (1 + sigma_max^2) I) that the image models use."""
    from latentdiff.eval.gmm import GMMDenoiser, make_gmm
    from latentdiff.eval.likelihood_ode import ode_log_likelihood
    from latentdiff.schedules import DiscreteSchedule

    gmm, schedule = make_gmm(dim, components, seed=0), DiscreteSchedule("linear")
    smin, smax = schedule.sigma_min, schedule.sigma_max
    g = torch.Generator().manual_seed(0)
    x0, _ = gmm.sample(n, g)
    x = x0 + smin * torch.randn(x0.shape, generator=g, dtype=torch.float64)

    def true(z, s):
        return torch.logsumexp(gmm.log_joint(z, torch.full((z.shape[0],), s, dtype=torch.float64)), 1)

    truth = true(x, smin)
    out = {"dim": dim, "components": components, "n": n, "rtol": tol, "atol": tol, "sigma_min": smin,
           "sigma_max": smax, "true_nll": float(-truth.mean())}
    for key, prior in (("", true), ("vp_prior_", None)):
        r = ode_log_likelihood(GMMDenoiser(gmm), x, sigma_min=smin, sigma_max=smax, divergence="exact",
                               rtol=tol, atol=tol, prior_logp=prior)
        out[f"{key}ode_nll"] = float(-r["logp"].mean())
        out[f"{key}abs_error"] = float((r["logp"] - truth).abs().mean())
        out[f"{key}max_abs_error"] = float((r["logp"] - truth).abs().max())
    return out


def parse_runs(args) -> list[tuple[str, str, list[str]]]:
    runs = [(p, p, []) for p in args.presets]
    for spec in args.extra or []:
        name, rest = spec.split("=", 1)
        preset, _, sets = rest.partition(":")
        runs.append((name, preset, [s for s in sets.split(",") if s]))
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--presets", nargs="+", default=PRESETS)
    p.add_argument("--extra", action="append", metavar="NAME=PRESET[:k=v,...]")
    p.add_argument("--minutes", type=float, default=10.0, help="training wall time of every run")
    p.add_argument("--methods", nargs="+", default=["vlb", "ode"])
    p.add_argument("--vlb-n", type=int, default=10000)
    p.add_argument("--vlb-batch-size", type=int, default=250)
    p.add_argument("--n-t", type=int, default=1)
    p.add_argument("--ode-n", type=int, default=1000)
    p.add_argument("--ode-batch-size", type=int, default=50)
    p.add_argument("--ode-minutes", type=float, help="stop each ODE evaluation after this long (n says how many)")
    p.add_argument("--probes", type=int, default=1)
    p.add_argument("--tol", type=float, default=1e-5, help="RK45 rtol = atol")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", help="compute just NAME:METHOD (a part) and exit")
    p.add_argument("--redo", action="store_true")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/likelihood.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    runs = parse_runs(args)
    if args.only:
        name, method = args.only.split(":")
        (name, preset, sets), = [r for r in runs if r[0] == name]
        part(args, name, method, ensure_trained(name, preset, sets, args.runs_dir, args.minutes))
        return
    start, rows = time.perf_counter(), []
    for name, preset, sets in runs:
        run = ensure_trained(name, preset, sets, args.runs_dir, args.minutes)
        for method in args.methods:
            rows += rows_of(name, preset, method, part(args, name, method, run), {**run_stats(run), "overrides": sets})
    result = {"runs": rows, "gmm": gmm_exactness(), "settings": {k: str(v) for k, v in vars(args).items()},
              "machine": f"{os.cpu_count()} CPU cores, 1 thread per process", "seconds": time.perf_counter() - start}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    for r in rows:
        print(f"{r['run']:24s} {r['method']:4s} {r.get('variance', ''):8s} {r['bits_per_dim']:.4f} +- "
              f"{r['stderr']:.4f}  n={r['n']}  steps={r['train_steps']}")
    print("gmm", json.dumps(result["gmm"]))


if __name__ == "__main__":
    main()
