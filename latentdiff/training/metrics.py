"""The run's ``metrics.jsonl``: a window of step results averaged into one JSON line every
``log_every`` steps, and the truncation a resume needs."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


class Window:
    """Running sums of the losses and logs since the last metrics line (skipped steps counted apart)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.count, self.skipped, self.logs_sum, self.t0 = 0.0, 0, 0, {}, time.time()

    def add(self, loss: float, logs: dict[str, float]) -> None:
        """One step's mean loss (NaN for a skipped step) and logs."""
        if not math.isfinite(loss):
            self.skipped += 1
            return
        self.loss_sum += loss
        self.count += 1
        for k, v in logs.items():
            self.logs_sum[k] = self.logs_sum.get(k, 0.0) + v

    def mean_loss(self) -> float:
        return self.loss_sum / self.count if self.count else float("nan")

    def record(self, step: int, loss: float, lr: float, minutes: float) -> dict[str, float]:
        """The metrics line of this window; ``loss`` is its mean over all processes."""
        return {
            "step": step,
            "loss": loss,
            "lr": lr,
            "steps_per_s": (self.count + self.skipped) / max(time.time() - self.t0, 1e-9),
            "minutes": minutes,
            **{k: v / max(self.count, 1) for k, v in self.logs_sum.items()},
        }


def append_record(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_after(path: Path, step: int) -> None:
    """Drop the lines logged after ``step`` (a resumed run redoes those steps) and unreadable ones."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    path.write_text("".join(line + "\n" for line in keep))
