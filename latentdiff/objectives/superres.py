"""Super-resolution training: the diffusion loss conditioned on a low-resolution copy of each
image, corrupted by conditioning augmentation (Ho et al. 2021, "Cascaded Diffusion Models", CDM,
section 3; Saharia et al. 2022, Imagen, section 2.5).

``noise``: Imagen's noise-conditioning augmentation. Each sample draws a level s ~ U[0, max_aug_level]
and its low-res input z is the forward diffusion of the clean low-res image y at time s,

    z = sqrt(alpha_bar(s)) y + sqrt(1 - alpha_bar(s)) eps,   eps ~ N(0, I),

with the continuous cosine alpha_bar (``schedules.cosine_alpha_bar``: s = 0 gives y itself, s = 1
pure noise); s is a conditioning input of the U-Net (``cond["aug_level"]``), and at sampling the
base model's output is corrupted at a chosen level the same way. ``blur``: CDM's (and DALL·E 2's)
Gaussian-blur augmentation: with probability ``blur_prob`` the low-res input is blurred with a
sigma drawn from ``blur_sigma``. ``none``: the clean low-res input, the ablation baseline.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from latentdiff.config import Config
from latentdiff.nn.superres import resample
from latentdiff.objectives.diffusion import DiffusionConfig, DiffusionLoss
from latentdiff.schedules import cosine_alpha_bar

AUGMENTATIONS = ("noise", "blur", "none")


@dataclasses.dataclass(frozen=True)
class SuperResConfig(Config):
    """A super-resolution stage: the factor between its input and output sides, the conditioning
    augmentation in training, and the default aug level at sampling."""

    factor: int = 2                     # output side / low-res input side (2: 32 -> 64, 4: 16 -> 64)
    augment: str = "noise"              # noise | blur | none: the low-res input's corruption in training
    max_aug_level: float = 0.5          # noise: training levels s ~ U[0, max]
    aug_level: float = 0.0              # noise: the sampling level by default (chosen by the aug-level sweep)
    blur_prob: float = 0.5              # blur: the share of low-res inputs blurred
    blur_sigma: tuple[float, float] = (0.4, 0.6)  # blur: Gaussian sigma ~ U[lo, hi], in low-res pixels

    def __post_init__(self):
        if self.factor < 1:
            raise ValueError(f"superres.factor must be at least 1, got {self.factor}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"superres.augment: expected one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        for name in ("max_aug_level", "aug_level", "blur_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"superres.{name} must be in [0, 1], got {getattr(self, name)}")
        lo, hi = self.blur_sigma
        if not 0 < lo <= hi:
            raise ValueError(f"superres.blur_sigma must be 0 < lo <= hi, got {list(self.blur_sigma)}")


def noise_augment(low_res: torch.Tensor, aug_level: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = sqrt(alpha_bar(s)) y + sqrt(1 - alpha_bar(s)) eps for (B, C, h, w) y, (B,) levels s, noise eps."""
    a = cosine_alpha_bar(aug_level.to(torch.float64)).to(low_res.dtype).view(-1, 1, 1, 1)
    return a.sqrt() * low_res + (1 - a).sqrt() * eps


def augment_at_level(low_res: torch.Tensor, aug_level: float, seed: int) -> dict[str, torch.Tensor]:
    """Sampling's condition for a stage: ``low_res`` (n, C, h, w) noise-augmented at one ``aug_level``
    with noise from a CPU generator of ``seed`` (the same on CPU and GPU), and the level itself (n,)."""
    n = low_res.shape[0]
    level = torch.full((n,), float(aug_level), dtype=torch.float64)
    eps = torch.randn(low_res.shape, generator=torch.Generator().manual_seed(seed)).to(low_res.device)
    return {"low_res": noise_augment(low_res.float(), level.to(low_res.device), eps), "aug_level": level.float()}


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) images blurred with a per-sample Gaussian of (B,) sigma (reflect padding, kernel
    radius ceil(3 sigma)); sigma = 0 leaves an image as it is."""
    B, C = images.shape[:2]
    radius = max(1, math.ceil(3 * float(sigma.max())))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=images.device)
    s = sigma.to(torch.float64).clamp_min(1e-6)[:, None]
    k = torch.exp(-0.5 * (x[None] / s) ** 2)
    k = (k / k.sum(1, keepdim=True)).to(images.dtype)            # (B, K)
    k = k.repeat_interleave(C, 0)                                 # (B C, K): one kernel per image channel
    h = F.pad(images.reshape(1, B * C, *images.shape[2:]), (radius, radius, radius, radius), mode="reflect")
    h = F.conv2d(h, k[:, None, None, :], groups=B * C)           # along x
    h = F.conv2d(h, k[:, None, :, None], groups=B * C)           # along y
    return h.reshape(images.shape)


def augment(low_res: torch.Tensor, cfg: SuperResConfig,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The training corruption of clean low-res inputs (B, C, h, w): -> (input, aug_level (B,)).
    All randomness from the CPU ``generator``; blur and none report level 0."""
    B, device = low_res.shape[0], low_res.device
    if cfg.augment == "noise":
        level = torch.rand(B, generator=generator, dtype=torch.float64) * cfg.max_aug_level
        eps = torch.randn(low_res.shape, generator=generator).to(device, low_res.dtype)
        return noise_augment(low_res, level.to(device), eps), level.float().to(device)
    zero = torch.zeros(B, device=device)
    if cfg.augment == "blur":
        lo, hi = cfg.blur_sigma
        blurred = torch.rand(B, generator=generator) < cfg.blur_prob
        sigma = lo + (hi - lo) * torch.rand(B, generator=generator)
        out = gaussian_blur(low_res, sigma.to(device))
        return torch.where(blurred.to(device)[:, None, None, None], out, low_res), zero
    return low_res, zero


class SuperResLoss(DiffusionLoss):
    """The diffusion loss (``DiffusionLoss``) of ``batch["x"]`` (B, C, S, S) conditioned on its low-res
    copy: antialiased bicubic downsampling to S / factor (``nn.superres.resample``), then ``augment``.
    Text or labels, and their dropout for guidance, as in DiffusionLoss; the low-res input is never
    dropped."""

    def __init__(self, cfg: DiffusionConfig, superres: SuperResConfig, num_classes: int = 0):
        super().__init__(cfg, num_classes)
        self.superres = superres

    def cond_from_batch(self, batch: dict, generator: torch.Generator) -> dict:
        cond = super().cond_from_batch(batch, generator)
        x = batch["x"]
        low = resample(x, x.shape[-1] // self.superres.factor)
        cond["low_res"], cond["aug_level"] = augment(low, self.superres, generator)
        return cond
