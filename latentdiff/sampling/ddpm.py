"""DDPM ancestral sampling, Ho et al. 2020 Algorithm 2: literally, and in the sigma form.

Both draw z ~ N(0, I) once per step t > 1 in the same order, so for the same
generator they return the same sample (tests/test_sampling.py checks this).

The sigma form runs on any descending sigma grid ending in 0. A VP chain is a
variance-exploding chain after rescaling x by 1/sqrt(alpha_bar), whose steps
have independent increments of variance sigma_t^2 - sigma_s^2, so the DDPM
posterior q(x_s | x_t, x0) is the Brownian bridge

    mean = x0 + (sigma_s^2 / sigma_t^2) (x_t - x0),
    var  = sigma_s^2 (sigma_t^2 - sigma_s^2) / sigma_t^2           ("small", beta~_t)

and Ho et al.'s other choice sigma_t^2 = beta_t is, in this view,
var = (sigma_t^2 - sigma_s^2) (1 + sigma_s^2) / (1 + sigma_t^2)        ("large").
"""

from __future__ import annotations

import torch

from latentdiff.sampling.ode import check_grid, randn_like

VARIANCES = ("small", "large", "learned")


@torch.no_grad()
def sample_ddpm_literal(eps_model, betas: torch.Tensor, x_T: torch.Tensor, *, generator=None,
                        variance: str = "small") -> torch.Tensor:
    """Algorithm 2 verbatim. ``eps_model(x_t, i)`` with i = t - 1 the 0-based index; x_T (B, ...) ~ N(0, I).

    sigma_t^2 = beta_t ("large") or beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t ("small").
    """
    if variance not in ("small", "large"):
        raise ValueError(f"the literal form supports variance 'small' or 'large', got {variance!r}")
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)
    x = x_T
    for t in range(len(betas), 0, -1):
        i = t - 1
        z = randn_like(x, generator) if t > 1 else torch.zeros_like(x)
        if variance == "large" or t == 1:
            var = betas[i]
        else:
            var = (1 - abar[i - 1]) / (1 - abar[i]) * betas[i]
        eps = eps_model(x, torch.full((x.shape[0],), i, device=x.device))
        x = (x - betas[i] / (1 - abar[i]).sqrt() * eps) / alphas[i].sqrt() + var.sqrt() * z
    return x


def ancestral_variance(sigma: torch.Tensor, sigma_next: torch.Tensor, variance: str, v_frac=None):
    """Variance (VE view) of the step sigma -> sigma_next; ``v_frac`` in [0,1] for ``learned``."""
    small = sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2
    large = (sigma**2 - sigma_next**2) * (1 + sigma_next**2) / (1 + sigma**2)
    if variance == "small":
        return small
    if variance == "large":
        return large
    if variance == "learned":  # Nichol & Dhariwal eq. 15, interpolated in log space
        return torch.exp(v_frac * torch.log(large) + (1 - v_frac) * torch.log(small))
    raise ValueError(f"unknown variance {variance!r}; valid: {', '.join(VARIANCES)}")


@torch.no_grad()
def sample_ddpm(denoise, x: torch.Tensor, sigmas: torch.Tensor, *, cond=None, generator=None, callback=None,
                variance: str = "small") -> torch.Tensor:
    """Algorithm 2 in the sigma form (DESIGN.md section 3). x (B, ...) = noise * sqrt(1 + sigmas[0]^2)."""
    check_grid(sigmas, 1, "ddpm")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        s = sigma.to(x.dtype).expand(x.shape[0]).to(x.device)
        if variance == "learned":
            x0, v_frac = denoise.predict(x, s, cond)
        else:
            x0, v_frac = denoise(x, s, cond), None
        if callback is not None:
            callback(i, sigma, x, x0)
        mean = x0 + (sigma_next**2 / sigma**2).to(x.dtype) * (x - x0)
        if sigma_next > 0:
            z = randn_like(x, generator)
            var = ancestral_variance(sigma, sigma_next, variance, v_frac)
            x = mean + torch.as_tensor(var, dtype=x.dtype, device=x.device).sqrt() * z
        else:
            x = mean
    return x
