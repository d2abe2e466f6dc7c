"""Helpers of the training benchmarks (``benchmarks/cascade.py``, ``unclip.py``, ``recaption.py``,
``backbones.py``): training runs in single-threaded lanes side by side, reading a run's metrics,
report parts computed once, and prompt adherence of prompt-major samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import torch


def in_lanes(lanes: list[list], work) -> None:
    """``work(item)`` for every item, each lane's items in order, the lanes side by side (threads)."""
    threads = [threading.Thread(target=lambda items=items: [work(i) for i in items]) for items in lanes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def train(run: Path, preset: str, minutes: float | None, overrides: list[str], log_mode: str = "w",
          threads: int = 1) -> None:
    """``latentdiff train --preset PRESET --out RUN [--minutes M] [--set ...]`` on ``threads`` threads
    (one: a lane), its output in ``RUN.log`` beside the run folder (resumes when the folder holds a
    checkpoint)."""
    cmd = [sys.executable, "-m", "latentdiff.cli.main", "train", "--preset", preset, "--out", str(run)]
    cmd += ["--minutes", str(minutes)] if minutes is not None else []
    cmd += [a for o in overrides for a in ("--set", o)]
    print(" ".join(cmd), flush=True)
    with open(run.parent / f"{run.name}.log", log_mode) as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT,
                       env={**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})


def train_lanes(lanes: list[list[tuple[str, str, float, list[str]]]], runs: Path) -> None:
    """Run each lane's (name, preset, minutes or None, overrides) trainings in order, the lanes side by
    side, each single-threaded; skips runs that already have a checkpoint."""
    def job(spec):
        name, preset, minutes, overrides = spec
        if not (runs / name / "checkpoint" / "config.json").exists():
            train(runs / name, preset, minutes, overrides)

    in_lanes(lanes, job)


def last_metrics(run: Path) -> dict:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()][-1]


def train_minutes(run: Path) -> float:
    return round(last_metrics(run)["minutes"], 2)


def train_steps(run: Path) -> int:
    return int(last_metrics(run)["step"])


def cached(path: Path, make):
    """A JSON part of the report, computed once (delete the file to recompute)."""
    if path.exists():
        return json.loads(path.read_text())
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2))
    return value


def adherence(images: torch.Tensor, prompts: list[str], k: int) -> dict:
    """The overall adherence (``eval.adherence.summarize``) of images (P * k, C, H, W), prompt-major."""
    from latentdiff.eval.adherence import score, summarize

    scores = [[score(p, images[i * k + j]) for j in range(k)] for i, p in enumerate(prompts)]
    return summarize(prompts, scores)["overall"]
