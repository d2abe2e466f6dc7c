"""Finiteness checks of a training step: the loss, the gradient and the updated parameters."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss, gradient or parameter; the last good checkpoint is kept."""


def nonfinite_parameters(module: nn.Module, limit: int = 3) -> list[str]:
    """Names of (up to ``limit``) parameters holding inf or NaN; one device sync for all of them."""
    named = [(name, p) for name, p in module.named_parameters()]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in named]).cpu()
    return [name for (name, _), ok in zip(named, finite.tolist()) if not ok][:limit]


def total_grad_norm(parameters: Iterable[nn.Parameter]) -> float:
    """The global 2-norm of the gradients (inf or NaN when any gradient is)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.nn.utils.get_total_norm(grads))


def nonfinite_state(state: dict[str, torch.Tensor], limit: int = 3) -> list[str]:
    """Names of (up to ``limit``) floating tensors of a state dict holding inf or NaN."""
    return [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()][:limit]
