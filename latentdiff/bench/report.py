"""Reading a benchmark run: the markdown table, torch.profiler's top operators, a bar chart."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import torch
from torch.profiler import ProfilerActivity, profile

from latentdiff.bench.networks import CONFIGS

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _fmt(v: dict) -> str:
    return f"{v['median']:.3g} ({v['min']:.3g}-{v['max']:.3g})"


def table(result: dict) -> str:
    """Markdown table of a ``run`` result."""
    lines = [f"bench-{result['config']} on {result['device']}, torch {result['torch']}, "
             f"diffusers {result['diffusers']}, {result['rounds']} rounds, compile {result['compile']}; "
             f"other processes used {result['other_load_cores']} cores on average. latentdiff in the memory format `accel` picks; "
             f"diffusers in {'channels_last' if result['diffusers_channels_last'] else 'NCHW (its default)'}.",
             "", "| task | precision | unit | latentdiff | diffusers | speed-up | peak MiB (ours / theirs) |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['task']} | {r['precision']} | {r['unit']} | {_fmt(r['latentdiff'])} | "
                     f"{_fmt(r['diffusers'])} | {r['speedup']:.2f}x | "
                     f"{r['latentdiff']['peak_mib']:.0f} / {r['diffusers']['peak_mib']:.0f} |")
    lines += ["", "Best precision of each: " + "; ".join(
        f"{b['task']} {b['speedup']:.2f}x ({b['latentdiff']['precision']} vs {b['diffusers']['precision']})"
        for b in result["best"])]
    return "\n".join(lines)


def top_ops(work, device: torch.device, rows: int = 12) -> str:
    work()  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        work()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def profile_tasks(config: str, device: str = "cpu", *, precision: str = "fp32",
                  diffusers_channels_last: bool = False) -> dict[str, str]:
    """{"<library> <task>": profiler table} for the forward pass and one training step."""
    from latentdiff.bench import _layout, _sides
    from latentdiff.bench.tasks import forward_task, train_task

    dev, cfg = torch.device(device), CONFIGS[config]
    out = {}
    for side in _sides(config, dev, False, diffusers_channels_last):
        cl = _layout(side, dev, precision == "bf16") if side.name == "latentdiff" else diffusers_channels_last
        for task in (forward_task(side, cfg, dev, precision == "bf16", cl, 1),
                     train_task(side, cfg, dev, precision == "bf16", cl, 1)):
            out[f"{side.name} {task.name} ({precision})"] = top_ops(task.work, dev)
    return out


def speedup_figure(results: list[dict], path: str | Path) -> None:
    """Bars of diffusers time / latentdiff time (> 1: latentdiff faster), one panel per config,
    the 1.0 line (parity) and the targets (1.3x training and forward, 1.33x = 0.75x sampling time)."""
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 3.8), squeeze=False)
    for ax, result in zip(axes[0], results):
        rows = result["rows"]
        names = list(dict.fromkeys(r["task"] for r in rows))
        precisions = list(dict.fromkeys(r["precision"] for r in rows))
        width = 0.8 / len(precisions)
        for j, precision in enumerate(precisions):
            values = [next(r["speedup"] for r in rows if r["task"] == n and r["precision"] == precision)
                      for n in names]
            xs = [i + (j - (len(precisions) - 1) / 2) * width for i in range(len(names))]
            ax.bar(xs, values, width, label=precision)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.axhline(1.3, color="red", lw=0.8, ls="--", label="target 1.3x")
        ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
        ax.set_ylabel("speed-up over diffusers")
        ax.set_title(f"bench-{result['config']}: {result['device']}", fontsize=9)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
