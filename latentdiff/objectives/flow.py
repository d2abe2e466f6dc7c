"""Rectified flow / flow matching, as Stable Diffusion 3 trains it (Esser et al. 2024, section 3).

Liu et al. 2023 (rectified flow) and Lipman et al. 2023 (conditional flow matching) join data and
noise by the straight path x_t = (1 - t) x0 + t eps, t in [0, 1], whose velocity
dx_t/dt = eps - x0 the network regresses:

    L = E_{t ~ pi, x0, eps} || v_theta(x_t, T t) - (eps - x0) ||^2

with pi the logit-normal density of SD3 (section 3.1, eq. 19; their best setting m = 0, s = 1):
t = sigmoid(u), u ~ N(m, s^2), which puts more training on the middle of the path. The backbone
sees the time T t (T = 1000, ``schedules.FlowSchedule``); in the VE view that is sigma = t / (1 - t)
(``precond``'s ``flow`` parameterisation), so the model samples with every sampler.
"""

from __future__ import annotations

import torch
from torch import nn

from latentdiff.objectives.diffusion import DiffusionConfig, DiffusionLoss
from latentdiff.precond import training_target


def logit_normal(batch_size: int, mean: float, std: float, generator: torch.Generator) -> torch.Tensor:
    """(B,) t = sigmoid(u), u ~ N(mean, std^2), float32 in (0, 1)."""
    return torch.sigmoid(mean + std * torch.randn(batch_size, generator=generator))


def flow_path(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps, t (B,) broadcast over x0 (B, ...)."""
    t = t.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - t) * x0 + t * eps


class FlowMatchingLoss(DiffusionLoss):
    """``loss_fn(model, batch, generator) -> (loss, logs)``: the velocity loss above, with the
    condition dropout of ``DiffusionLoss`` (classifier-free guidance) and its batch keys."""

    trains_flow = True

    def sample_t(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return logit_normal(batch_size, self.cfg.logit_mean, self.cfg.logit_std, generator)

    def __call__(self, model: nn.Module, batch: dict, generator: torch.Generator):
        x0 = batch["x"]
        t = self.sample_t(x0.shape[0], generator)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        cond = self.cond_from_batch(batch, generator)
        t = t.to(x0.device)
        out = model(flow_path(x0, eps, t), self.cfg.timesteps * t, **cond).float()
        mse = ((out - training_target("flow", x0, eps, t)) ** 2).mean(dim=tuple(range(1, x0.ndim)))
        return mse.mean(), {"mse": float(mse.detach().mean())}


def diffusion_loss(cfg: DiffusionConfig, num_classes: int = 0) -> DiffusionLoss:
    """The training loss of a diffusion config: flow matching for ``flow``, else ``DiffusionLoss``."""
    return (FlowMatchingLoss if cfg.parameterisation == "flow" else DiffusionLoss)(cfg, num_classes)
