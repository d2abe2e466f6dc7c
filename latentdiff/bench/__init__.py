"""latentdiff against diffusers on the same networks (DESIGN.md section 6), in one process.

``run(config)`` builds both libraries' networks at bench-S or bench-L, checks their parameter
counts agree within 5%, and times every task (``tasks.py``) for each precision, alternating the
libraries round by round (the order flips every round) so that drift of a shared machine hits
both. ``report.table(result)`` gives medians, min-max and the latentdiff/diffusers ratios.
"""

from __future__ import annotations

import platform

import torch

from latentdiff.accel import prepare, use_channels_last
from latentdiff.bench.networks import CONFIGS, Side, count, diffusers_side, latentdiff_side
from latentdiff.bench.tasks import build_tasks
from latentdiff.bench.timing import OtherLoad, measure, summary

__all__ = ["run", "run_from_args", "add_arguments", "CONFIGS"]


def _sides(config: str, device: torch.device, compile: bool, diffusers_channels_last: bool,
           compile_mode: str | None = None) -> list[Side]:
    ours, theirs = latentdiff_side(config), diffusers_side(config)
    for m in ours.modules():  # the memory format is set again for each precision (``_layout``)
        prepare(m, device, compile=compile and m is ours.net, compile_mode=compile_mode)
    for m in theirs.modules():  # as diffusers runs by default (NCHW), unless asked otherwise
        prepare(m, device, channels_last=diffusers_channels_last, compile=compile and m is theirs.net,
                compile_mode=compile_mode)
    for k, n in count(ours).items():
        m = count(theirs)[k]
        if abs(n - m) > 0.05 * m:
            raise RuntimeError(f"bench-{config} {k}: latentdiff {n:,} vs diffusers {m:,} parameters differ by > 5%")
    return [ours, theirs]


def _layout(ours: Side, device: torch.device, bf16: bool) -> bool:
    """latentdiff's networks in the memory format ``accel`` picks for this precision -> channels_last?"""
    for m in ours.modules():
        prepare(m, device, bf16=bf16, compile=False)
    return use_channels_last(device, bf16)


def _time_rounds(sides: list[Side], tasks: dict, rounds: int, device, log) -> dict:
    """{task name: {side name: [(seconds, peak MiB), ...]}}, one warm-up call first (not recorded)."""
    names = [t.name for t in tasks[sides[0].name]]
    for side in sides:
        for task in tasks[side.name]:
            task.work()
    times = {name: {s.name: [] for s in sides} for name in names}
    for r in range(rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for i, name in enumerate(names):
            for side in order:
                times[name][side.name].append(measure(tasks[side.name][i].work, device))
        log(f"round {r + 1}/{rounds} done")
    return times


def _row(task, precision: str, runs: dict) -> dict:
    row = {"task": task.name, "precision": precision, "unit": task.unit}
    for side, values in runs.items():
        secs = [s for s, _ in values]
        row[side] = {**summary([task.value(s) for s in secs]), "peak_mib": max(m for _, m in values), "seconds": summary(secs)["median"]}
    ours, theirs = row["latentdiff"], row["diffusers"]
    row["speedup"] = theirs["seconds"] / ours["seconds"]          # > 1: latentdiff is faster
    row["memory_ratio"] = ours["peak_mib"] / max(theirs["peak_mib"], 1e-9)
    return row


def run(config: str = "S", *, rounds: int = 3, precisions=("fp32", "bf16"), device: str = "cpu",
        compile: bool = False, compile_mode: str | None = None, diffusers_channels_last: bool = False,
        train_steps: int = 3, forward_repeats: int = 3, sampling: bool = True, log=print) -> dict:
    """Time bench-``config`` in both libraries -> a JSON-able dict with one row per (task, precision)."""
    if config not in CONFIGS:
        raise ValueError(f"unknown bench config {config!r}; valid: {', '.join(CONFIGS)}")
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    dev = torch.device(device)
    cfg = CONFIGS[config]
    sides = _sides(config, dev, compile, diffusers_channels_last, compile_mode)
    rows = []
    with OtherLoad() as load:
        for precision in precisions:
            if precision not in ("fp32", "bf16"):
                raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
            bf16 = precision == "bf16"
            layout = {"latentdiff": _layout(sides[0], dev, bf16), "diffusers": diffusers_channels_last}
            tasks = {s.name: build_tasks(s, cfg, dev, bf16=bf16, channels_last=layout[s.name], train_steps=train_steps,
                                         forward_repeats=forward_repeats, sampling=sampling) for s in sides}
            log(f"bench-{config} {precision}: {len(tasks['latentdiff'])} tasks x {rounds} rounds")
            times = _time_rounds(sides, tasks, rounds, dev, log)
            rows += [_row(t, precision, times[t.name]) for t in tasks["latentdiff"]]
    return {"config": config, "device": device_name(dev), "torch": torch.__version__, "diffusers": _diffusers_version(),
            "compile": compile, "compile_mode": compile_mode, "diffusers_channels_last": diffusers_channels_last,
            "rounds": rounds,
            "parameters": {s.name: count(s) for s in sides}, "other_load_cores": round(load.cores, 2),
            "rows": rows, "best": best_of(rows)}


def best_of(rows: list[dict]) -> list[dict]:
    """Per task, each library at its faster precision, and the ratio of those."""
    out = []
    for name in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == name]
        pick = {side: min(mine, key=lambda r: r[side]["seconds"]) for side in ("latentdiff", "diffusers")}
        out.append({"task": name, **{side: {"precision": r["precision"], "seconds": r[side]["seconds"]}
                                     for side, r in pick.items()},
                    "speedup": pick["diffusers"]["diffusers"]["seconds"] / pick["latentdiff"]["latentdiff"]["seconds"]})
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {torch.get_num_threads()} threads ({torch.backends.cpu.get_cpu_capability()})"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else the machine type."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def _diffusers_version() -> str:
    import diffusers
    return diffusers.__version__


def add_arguments(p, *, configs: str, rounds: int, precision: str) -> None:
    """The benchmark's command-line options (``latentdiff bench`` and benchmarks/unet_vs_diffusers.py)."""
    p.add_argument("--config", default=configs, help="S, L or S,L (DESIGN.md section 6)")
    p.add_argument("--rounds", type=int, default=rounds, help="timed rounds per task, alternating the libraries")
    p.add_argument("--precision", default=precision, help="comma list of fp32, bf16 (autocast)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="device both libraries run on")
    p.add_argument("--compile", action="store_true", help="torch.compile both U-Nets")
    p.add_argument("--compile-mode", help='torch.compile mode for both, e.g. "reduce-overhead" (CUDA graphs)')
    p.add_argument("--diffusers-channels-last", action="store_true", help="run diffusers in channels_last too")
    p.add_argument("--train-steps", type=int, default=3, help="AdamW steps per timed training call")
    p.add_argument("--no-sampling", action="store_true", help="skip the full sampling runs")
    p.add_argument("--profile", action="store_true", help="also print torch.profiler's top ops of both libraries")
    p.add_argument("--json", help="write the results here (one file; {config} in the name is replaced)")
    p.add_argument("--png", help="also save a bar chart of the speed-ups")


def run_from_args(args) -> list[dict]:
    """Run, print the table (and profiles) of each config, write the JSON; -> the results."""
    import json
    from pathlib import Path

    from latentdiff.bench.report import profile_tasks, table

    results = []
    for config in args.config.split(","):
        result = run(config, rounds=args.rounds, precisions=tuple(args.precision.split(",")), device=args.device,
                     compile=args.compile, compile_mode=args.compile_mode,
                     diffusers_channels_last=args.diffusers_channels_last,
                     train_steps=args.train_steps, sampling=not args.no_sampling)
        print(table(result) + "\n", flush=True)
        if args.profile:
            result["profile"] = profile_tasks(config, args.device, diffusers_channels_last=args.diffusers_channels_last)
            for name, text in result["profile"].items():
                print(f"## {name}\n{text}\n")
        results.append(result)
        if args.json:
            path = Path(args.json.replace("{config}", config))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=1))
    if args.png:
        from latentdiff.bench.report import speedup_figure
        speedup_figure(results, args.png)
    return results
