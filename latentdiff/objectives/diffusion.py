"""Denoising losses for discrete VP models: DDPM Algorithm 1, v and x0 targets, min-SNR weighting.

Ho et al. 2020, Algorithm 1: sample t ~ U{1..T}, eps ~ N(0, I) and take a
gradient step on || eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) ||^2.
The same regression with the v target (Salimans & Ho 2022) or the x0 target,
optionally weighted by min-SNR-gamma (Hang et al. 2023, eq. 10): the x0-space
weight min(SNR, gamma), divided by SNR for eps and by SNR + 1 for v.
With learned variance the Improved-DDPM hybrid loss is added (learned_variance.py).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from latentdiff.config import Config
from latentdiff.objectives.learned_variance import vlb_term
from latentdiff.precond import training_target
from latentdiff.schedules import SCHEDULES, DiscreteSchedule


@dataclasses.dataclass(frozen=True)
class DiffusionConfig(Config):
    """How a discrete VP diffusion model is trained and what its backbone predicts."""

    schedule: str = "linear"          # linear | cosine | scaled_linear
    timesteps: int = 1000             # discrete training timesteps T
    parameterisation: str = "eps"     # eps | v | x0 | flow (rectified flow: velocity on the straight path)
    min_snr_gamma: float | None = None  # None: plain MSE (Algorithm 1 for eps)
    learned_variance: bool = False    # Improved DDPM hybrid loss
    vlb_weight: float = 0.001         # lambda in L_simple + lambda L_vlb
    cond_drop_prob: float = 0.0       # classifier-free guidance: labels -> null class, text -> no tokens
    logit_mean: float = 0.0           # flow: t ~ sigmoid(N(logit_mean, logit_std^2)) (SD3's logit-normal)
    logit_std: float = 1.0            # flow: (the schedule is then the flow path; ``schedule`` is unused)

    def __post_init__(self):
        # refused when the config is made, so a bad ``--set diffusion.*`` fails before a run folder exists
        if self.schedule not in SCHEDULES:
            raise ValueError(f"diffusion.schedule: unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.parameterisation not in ("eps", "v", "x0", "flow"):
            raise ValueError(f"diffusion.parameterisation: expected eps, v, x0 or flow, got {self.parameterisation!r}")
        if self.parameterisation == "flow" and (self.learned_variance or self.min_snr_gamma is not None):
            raise ValueError("diffusion.parameterisation=flow takes no learned_variance and no min_snr_gamma "
                             "(the velocity loss has its own weighting: the logit-normal t density)")
        if not self.logit_std > 0:
            raise ValueError(f"diffusion.logit_std must be > 0, got {self.logit_std}")
        if self.timesteps < 1:
            raise ValueError(f"diffusion.timesteps must be at least 1, got {self.timesteps}")
        if not 0 <= self.cond_drop_prob <= 1:
            raise ValueError(f"diffusion.cond_drop_prob must be in [0, 1], got {self.cond_drop_prob}")


def snr_weight(snr: torch.Tensor, parameterisation: str, gamma: float | None) -> torch.Tensor:
    """Per-sample loss weight on the backbone's target; 1 when gamma is None."""
    if gamma is None:
        return torch.ones_like(snr)
    clipped = snr.clamp(max=gamma)
    return {"eps": clipped / snr, "v": clipped / (snr + 1), "x0": clipped}[parameterisation]


class DiffusionLoss:
    """``loss_fn(model, batch, generator) -> (loss, logs)`` for the trainer (training/trainer.py).

    ``batch["x"]`` is (B, C, H, W) data x0; ``batch["label"]`` (B,) class labels when
    ``num_classes`` > 0; ``batch["text"]`` (B, L, D), ``"text_mask"`` (B, L), ``"pooled"`` (B, D)
    for text-to-image. With probability ``cond_drop_prob`` a sample's condition is dropped
    (classifier-free guidance, Ho & Salimans 2022): its label becomes the null class
    ``num_classes``, its text the empty prompt (zero tokens, all-False mask, zero pooled), one
    draw per sample for all of them. ``batch["control"]`` (B, C, S, S), when present, is passed on
    (a ControlNet's control image). A ``flow`` config is refused: its loss is
    ``objectives.flow.FlowMatchingLoss`` (``diffusion_loss`` picks it), and a VP loss under a flow
    denoiser would train the wrong target without a word.
    """

    trains_flow = False  # FlowMatchingLoss: True

    def __init__(self, cfg: DiffusionConfig, num_classes: int = 0):
        if (cfg.parameterisation == "flow") != self.trains_flow:
            raise ValueError(f"{type(self).__name__} does not train diffusion.parameterisation={cfg.parameterisation}"
                             + (" (rectified flow is trained by text-to-image and class-conditional runs and "
                                "ControlNets; not yet by super-resolution, unCLIP or prior runs)"
                                if cfg.parameterisation == "flow" else ""))
        self.cfg, self.num_classes = cfg, num_classes
        self.schedule = DiscreteSchedule(cfg.schedule, cfg.timesteps)
        self.alpha_bar = self.schedule.alpha_bar.float()

    def sample_t(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """t ~ U{0..T-1} (Ho et al.'s t = 1..T). (B,) int64."""
        return torch.randint(0, self.cfg.timesteps, (batch_size,), generator=generator)

    def cond_from_batch(self, batch: dict, generator: torch.Generator) -> dict:
        B = batch["x"].shape[0]
        drop = torch.zeros(B, dtype=torch.bool)
        if self.cfg.cond_drop_prob > 0 and (self.num_classes or "text" in batch):
            drop = torch.rand(B, generator=generator) < self.cfg.cond_drop_prob
        drop = drop.to(batch["x"].device)
        cond = {}
        if self.num_classes:
            labels = batch["label"]
            cond["class_labels"] = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        if "text" in batch:
            keep = ~drop
            cond["text"] = batch["text"] * keep[:, None, None]
            cond["text_mask"] = batch["text_mask"] & keep[:, None]
            cond["pooled"] = batch["pooled"] * keep[:, None]
        if "control" in batch:  # ControlNet: the control is never dropped, so it is learned alone too
            cond["control"] = batch["control"]
        return cond

    def __call__(self, model: nn.Module, batch: dict, generator: torch.Generator):
        x0 = batch["x"]
        B = x0.shape[0]
        t = self.sample_t(B, generator)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        cond = self.cond_from_batch(batch, generator)
        t = t.to(x0.device)
        a = self.alpha_bar.to(x0.device)[t].view(B, *([1] * (x0.ndim - 1)))
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        out = model(x_t, t.float(), **cond).float()
        if self.cfg.learned_variance:
            out, v = out.chunk(2, dim=1)
        target = training_target(self.cfg.parameterisation, x0, eps, a)
        snr = (a / (1 - a)).flatten()
        weight = snr_weight(snr, self.cfg.parameterisation, self.cfg.min_snr_gamma)
        mse = ((out - target) ** 2).mean(dim=tuple(range(1, x0.ndim)))
        loss = (weight * mse).mean()
        logs = {"mse": float(mse.detach().mean())}
        if self.cfg.learned_variance:
            vlb = vlb_term(self.schedule, self.cfg.parameterisation, x0, x_t, t, out.detach(), v)
            loss = loss + self.cfg.vlb_weight * self.cfg.timesteps * vlb.mean()
            logs["vlb"] = float(vlb.detach().mean())
        return loss, logs
