"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper (DESIGN.md section 3).

D_guided = D(x | uncond) + w (D(x | cond) - D(x | uncond)); w = 1 is the conditional
model, w = 0 the unconditional. For fixed x and sigma, eps = (x - x0)/sigma is affine in
x0, so guiding x0 equals guiding eps. Both branches run as one batch of 2B.
"""

from __future__ import annotations

import torch
from torch import nn


def _cat_cond(cond: dict, uncond: dict) -> dict:
    return {k: torch.cat([cond[k], uncond[k]]) for k in cond}


class CFGDenoiser(nn.Module):
    """``CFGDenoiser(denoiser, scale, uncond)(x (B,...), sigma (B,), cond) -> x0_hat (B,...)``.

    ``uncond`` is the conditioning dict of the unconditional branch, each tensor
    with the same batch size as ``cond``'s (e.g. the null class, or a negative prompt).
    """

    def __init__(self, denoiser: nn.Module, scale: float, uncond: dict):
        super().__init__()
        self.denoiser, self.scale, self.uncond = denoiser, scale, uncond

    def predict(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict | None = None):
        """(guided x0_hat, the conditional branch's v_frac or None)."""
        if self.scale == 1.0 or not cond:
            return self.denoiser.predict(x, sigma, cond)
        if self.scale == 0.0:
            return self.denoiser.predict(x, sigma, self.uncond)
        x0, v_frac = self.denoiser.predict(torch.cat([x, x]), torch.cat([sigma, sigma]), _cat_cond(cond, self.uncond))
        x0_c, x0_u = x0.chunk(2)
        return x0_u + self.scale * (x0_c - x0_u), None if v_frac is None else v_frac.chunk(2)[0]

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict | None = None) -> torch.Tensor:
        return self.predict(x, sigma, cond)[0]


def dynamic_threshold(x0: torch.Tensor, percentile: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, section 2.3) of (B, ...) x0 predictions:
    s = max(1, the ``percentile`` quantile of |x0| per sample); x0 -> clip(x0, -s, s) / s."""
    s = torch.quantile(x0.detach().abs().flatten(1).float(), percentile, dim=1).clamp_min(1.0).to(x0.dtype)
    s = s.view(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


class ThresholdedDenoiser(nn.Module):
    """Wraps a denoiser (e.g. a CFGDenoiser) so its x0 predictions are clipped: dynamically at
    ``percentile`` (Imagen; pixel-space models), or statically to [-1, 1] when ``percentile`` is None."""

    def __init__(self, denoiser: nn.Module, percentile: float | None = 0.995):
        super().__init__()
        self.denoiser, self.percentile = denoiser, percentile

    def predict(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict | None = None):
        x0, v_frac = self.denoiser.predict(x, sigma, cond)
        x0 = x0.clamp(-1, 1) if self.percentile is None else dynamic_threshold(x0, self.percentile)
        return x0, v_frac

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict | None = None) -> torch.Tensor:
        return self.predict(x, sigma, cond)[0]


class ControlWindow(nn.Module):
    """Applies ControlNets only for sigma in [sigma_lo, sigma_hi] (a range of sampling steps): outside
    it the condition's ``control_scale`` (B, K) is zeroed, so the base model alone denoises."""

    def __init__(self, denoiser: nn.Module, sigma_lo: float, sigma_hi: float):
        super().__init__()
        self.denoiser, self.sigma_lo, self.sigma_hi = denoiser, sigma_lo, sigma_hi

    def predict(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict | None = None):
        if cond and "control" in cond:
            s = torch.as_tensor(sigma, device=x.device).float().reshape(-1).expand(x.shape[0])
            tol = 1e-5 * self.sigma_hi
            inside = ((s >= self.sigma_lo - tol) & (s <= self.sigma_hi + tol)).float()[:, None]
            scale = cond.get("control_scale", torch.ones(x.shape[0], 1, device=x.device))
            cond = {**cond, "control_scale": scale * inside}
        return self.denoiser.predict(x, sigma, cond)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict | None = None) -> torch.Tensor:
        return self.predict(x, sigma, cond)[0]


def control_sigma_window(sigmas: torch.Tensor, start: float, end: float) -> tuple[float, float]:
    """(sigma_lo, sigma_hi) of the steps i of an N-step grid with start <= i/N and (i+1)/N <= end
    (the step fractions diffusers' control_guidance_start/end use); an empty range gives lo > hi."""
    n = len(sigmas) - 1
    steps = [i for i in range(n) if i / n >= start - 1e-9 and (i + 1) / n <= end + 1e-9]
    if not steps:
        return float("inf"), 0.0
    return float(sigmas[steps[-1]]), float(sigmas[steps[0]])
