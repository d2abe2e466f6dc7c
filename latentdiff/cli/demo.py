"""``latentdiff demo``: train the class-conditional Fashion-MNIST DDPM within a time budget, then sample and evaluate.

Writes into ``out``: samples.png (one row per class), loss.png, metrics.jsonl, checkpoint/,
samples/ (training grids) and report.json (DESIGN.md section 3; issue 2).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from latentdiff.data import CLASS_NAMES
from latentdiff.io.images import save_grid
from latentdiff.pipelines import evaluate_model, load_denoiser, train_run
from latentdiff.presets import get_preset


def rows_by_class(images: torch.Tensor, labels: torch.Tensor, num_classes: int, per_row: int) -> torch.Tensor:
    """The first ``per_row`` images of each class, class by class: a grid with one row per class."""
    return torch.cat([images[labels == k][:per_row] for k in range(num_classes)])


def run_demo(out: str | Path, minutes: float = 12.0, n_eval: int = 1000, preset: str = "fmnist-ddpm") -> dict:
    out = Path(out)
    start = time.perf_counter()
    cfg = get_preset(preset)
    cfg = cfg.replace(train=cfg.train.replace(max_minutes=minutes))
    summary = train_run(cfg, out)
    denoiser, cfg = load_denoiser(out / "checkpoint")
    report, images, labels = evaluate_model(denoiser, cfg, n_eval)
    save_grid(rows_by_class(images, labels, cfg.model.num_classes, 10), out / "samples.png", nrow=10,
              caption="rows: " + ", ".join(CLASS_NAMES))
    report.update(train_steps=summary["steps"], train_minutes=round(summary["minutes"], 2),
                  total_minutes=round((time.perf_counter() - start) / 60, 2), preset=preset,
                  torch_threads=torch.get_num_threads())
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report
