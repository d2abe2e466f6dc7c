"""Progress bars that fit the work: the training bar (steps, or a time budget) and its closing line.

With ``train.max_minutes`` set, the bar's total is the budget: it fills with training time
(summed across resumes) and shows minutes used / budget, minutes left, steps and steps/s; without
one it counts optimizer steps up to ``max_steps``. Every run ends with one line on stderr saying
why it stopped (time budget reached, max_steps reached, or a signal).
"""

from __future__ import annotations

import signal
import sys
import time

from tqdm.auto import tqdm


class TrainBar:
    """The trainer's bar. ``cfg``: the TrainConfig (``max_steps``, ``max_minutes``); ``step`` and
    ``elapsed_s``: where the run starts (a resumed run has done some already)."""

    def __init__(self, cfg, step: int, elapsed_s: float, disable: bool = False):
        self.max_steps, self.minutes, self.disable = cfg.max_steps, cfg.max_minutes, disable
        self._step0, self._t0 = step, time.time()
        if self.minutes is None:
            self.bar = tqdm(total=self.max_steps, initial=step, disable=disable, desc="train", unit="step")
        else:
            budget_s = self.minutes * 60
            self.bar = tqdm(total=budget_s, initial=min(elapsed_s, budget_s), disable=disable,
                            bar_format="train: {percentage:3.0f}%|{bar}| {desc}")  # desc: the text after the bar
            self._postfix(step, elapsed_s, None)

    def _postfix(self, step: int, elapsed_s: float, loss: float | None) -> None:
        rate = (step - self._step0) / max(time.time() - self._t0, 1e-9)
        left = max(self.minutes - elapsed_s / 60, 0.0)
        text = (f"{elapsed_s / 60:.1f}/{self.minutes:g} min, {left:.1f} min left, step {step}/{self.max_steps}, "
                f"{rate:.2f} steps/s")
        self.bar.set_description_str(text if loss is None else f"{text}, loss={loss:.4f}", refresh=False)

    def update(self, step: int, elapsed_s: float, loss: float) -> None:
        """After an optimizer step: ``step`` done, ``elapsed_s`` of training time in all."""
        if self.minutes is None:
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.bar.update(step - self.bar.n)
        else:
            self._postfix(step, elapsed_s, loss)
            self.bar.update(min(elapsed_s, self.bar.total) - self.bar.n)

    def close(self) -> None:
        self.bar.close()

    def stopped(self, step: int, elapsed_s: float, stop_signal: int | None) -> str:
        """Print (main process only) and return the one line saying why the run stopped."""
        minutes = elapsed_s / 60
        if stop_signal is not None:
            name = "SIGTERM" if stop_signal == signal.SIGTERM else "SIGINT"
            reason = f"stopped by {name}"
        elif step >= self.max_steps:
            reason = f"max_steps reached ({self.max_steps})"
        elif self.minutes is not None and minutes >= self.minutes:
            reason = f"time budget reached ({self.minutes:g} min)"
        else:
            reason = "stopped"
        line = f"train: {reason} at step {step} after {minutes:.1f} min of training"
        if not self.disable:
            print(line, file=sys.stderr, flush=True)
        return line
