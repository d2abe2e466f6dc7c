"""Loss curves from a run's ``metrics.jsonl``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(metrics_jsonl_path: str | os.PathLike) -> list[dict]:
    """The JSON records of a ``metrics.jsonl`` file (unreadable lines skipped)."""
    records = []
    with open(metrics_jsonl_path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
    return records


def smooth(values: list[float], beta: float = 0.6) -> list[float]:
    """Bias-corrected exponential moving average (as in Adam's moment estimates)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i))
    return out


def plot_loss(metrics_jsonl_path: str | os.PathLike, png_path: str | os.PathLike) -> Path | None:
    """Plot loss against step: raw values (light) and an EMA-smoothed curve.

    The y-axis is logarithmic when all losses are positive. Returns the PNG
    path, or ``None`` when the file has no finite losses yet.
    """
    points = [
        (r["step"], float(r["loss"]))
        for r in read_metrics(metrics_jsonl_path)
        if "step" in r and isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])
    ]
    if not points:
        return None
    steps, losses = zip(*points)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=1, label="loss")
        ax.plot(steps, smooth(list(losses)), color="tab:blue", linewidth=2, label="loss (EMA)")
        if min(losses) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        png_path = Path(png_path)
        png_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png_path)
    finally:
        plt.close(fig)
    return png_path
