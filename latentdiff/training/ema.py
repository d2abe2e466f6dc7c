"""Exponential moving average of model weights.

Sampling from an EMA of the weights, rather than the last iterate, is what
makes diffusion samples clean (Ho et al. 2020 use decay 0.9999; Song &
Ermon 2020, "Improved Techniques for Training Score-Based Generative Models",
section 3.5 analyse why). The EMA copy is a plain module in eval mode that
samplers use directly.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """An EMA copy of a module's parameters (and a copy of its buffers).

    After each optimizer step call :meth:`update` with the *unwrapped* model
    (``accelerator.unwrap_model(model)``), never the DDP wrapper, so the
    parameter names match.

    Under DDP every rank holds identical parameters after each optimizer step
    (gradients are all-reduced before it), so every rank's EMA, fed the same
    parameters with the same ``step``, is identical too: no synchronisation
    of the EMA is needed, and rank 0 can save it for everybody.

    Args:
        model: the module to track; it is deep-copied (make the copy before
            wrapping the model for distributed training or mixed precision).
        max_decay: the decay reached after warm-up, e.g. 0.999.

    Attributes:
        model: the EMA module (eval mode, ``requires_grad=False``).
    """

    def __init__(self, model: nn.Module, max_decay: float = 0.999) -> None:
        if not 0.0 <= max_decay < 1.0:
            raise ValueError(f"max_decay must be in [0, 1), got {max_decay}")
        self.max_decay = max_decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay(self, step: int) -> float:
        """Decay for the update after optimizer step ``step`` (0-based).

        ``min(max_decay, (1 + step) / (10 + step))``: a warm-up that starts
        at 0.1, so the EMA forgets the random initialisation quickly, and
        reaches 0.999 after about 9000 steps (a common schedule, e.g. in
        tensorflow's ``ExponentialMovingAverage(num_updates=...)``).
        """
        return min(self.max_decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> float:
        """``ema = decay * ema + (1 - decay) * param`` for every parameter;
        buffers (e.g. norm statistics) are copied. Returns the decay used."""
        decay = self.decay(step)
        params = dict(model.named_parameters())
        for name, ema_param in self.model.named_parameters():
            param = params[name].detach()
            ema_param.lerp_(param.to(device=ema_param.device, dtype=ema_param.dtype), 1.0 - decay)
        buffers = dict(model.named_buffers())
        for name, ema_buffer in self.model.named_buffers():
            ema_buffer.copy_(buffers[name])
        return decay

    def to(self, device: torch.device | str) -> "EMA":
        """Move the EMA module to ``device``; returns ``self``."""
        self.model.to(device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA module's state dict (``name -> Tensor``)."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a state dict saved by :meth:`state_dict` (strict)."""
        self.model.load_state_dict(state)
