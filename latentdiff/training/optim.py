"""Optimizer and learning-rate schedule used by the trainer."""

from __future__ import annotations

from typing import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR


def build_optimizer(
    params: Iterable[torch.nn.Parameter] | Iterable[dict],
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019) with decoupled weight decay.

    ``params`` may be parameters or param-group dicts. The implementation
    (fused / foreach / per-tensor) is left to torch's default for the device.
    """
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))


class LinearWarmup:
    """LR multiplier ``min(1, (step + 1) / warmup_steps)``: linear warm-up, then constant.

    A class rather than a closure so that ``LambdaLR.state_dict()`` stores
    its (plain) attributes and the schedule survives a resume.
    """

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: int) -> float:
        if self.warmup_steps <= 0:
            return 1.0
        return min(1.0, (step + 1) / self.warmup_steps)


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> LambdaLR:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then a constant LR.

    The first step runs at ``lr / warmup_steps``; step the scheduler once per
    optimizer step.
    """
    return LambdaLR(optimizer, LinearWarmup(warmup_steps))
