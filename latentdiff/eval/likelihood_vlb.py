"""The variational bound of a discrete-time diffusion model in bits/dim (Ho et al. 2020, eq. 5).

    -log p(x0) <= L_vlb = L_T + sum_{t=2}^{T} L_{t-1} + L_0,
    L_T     = KL(q(x_T | x0) || N(0, I)),
    L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t)),   x_t ~ q(x_t | x0),
    L_0     = -log p_theta(x0 | x1)   (the discretised Gaussian decoder, eq. 13, for 8-bit data).

Here the index i = 0..T-1 of the schedule is Ho et al.'s t = i + 1, so the KL terms are i = 1..T-1
and the decoder is i = 0. The model enters only through the denoiser contract: x0_hat =
D(x_t / sqrt(abar_i), sigma_i) (the VE view of x_t), so every parameterisation is handled alike;
p_theta's mean is the posterior mean at x0_hat (eq. 7) and its variance fixed (beta~ "small" or
beta "large", section 3.2) or learned (Nichol & Dhariwal 2021, eq. 15). The per-term maths lives in
``objectives.learned_variance`` (the loss uses the same functions).

The sum over T - 1 KL terms is either computed in full (T forward passes per image) or estimated
without bias by sampling i from a proposal p(i) and weighting L_i / p(i): uniform, or the
importance proposal p(i) ~ sqrt(E[L_i^2]) of Nichol & Dhariwal 2021 (section 3.3), fitted on a
pilot batch and mixed with 10% uniform so every weight stays bounded. The standard error over
images then contains both the spread over images and the spread over sampled t.
"""

from __future__ import annotations

import math

import torch

from latentdiff.objectives.learned_variance import (fixed_log_variance, model_log_variance, prior_kl,
                                                    vlb_term_x0)
from latentdiff.schedules import DiscreteSchedule

VARIANCES = ("small", "large", "learned")


def predict_x0(denoise, schedule: DiscreteSchedule, x_t: torch.Tensor, t: torch.Tensor, cond: dict | None = None):
    """(x0_hat, v_frac or None) from the VP sample x_t (B, ...) at integer steps t (B,).

    A ``Denoiser`` (``precond``) with learned variance also returns its variance fraction in [0, 1];
    any other callable D(x, sigma, cond) gives None.
    """
    sigma = schedule.sigmas.to(x_t.device)[t]
    abar = schedule.alpha_bar.to(x_t.device)[t].reshape(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype)
    x = x_t / abar.sqrt()  # the VE view x = x0 + sigma n
    if hasattr(denoise, "predict"):
        return denoise.predict(x, sigma, cond)
    return denoise(x, sigma, cond), None


def theta_log_variance(schedule: DiscreteSchedule, t: torch.Tensor, like: torch.Tensor, variance: str,
                       v_frac: torch.Tensor | None) -> torch.Tensor:
    """log Sigma_theta (shaped like ``like``) for ``variance`` in VARIANCES at steps t (B,)."""
    if variance == "learned":
        if v_frac is None:
            raise ValueError("variance 'learned' needs a model with learned variance (a second set of channels)")
        return model_log_variance(schedule, v_frac.to(like.dtype), t)
    return fixed_log_variance(schedule, t, like, variance)


def vlb_terms(denoise, schedule: DiscreteSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, *,
              cond: dict | None = None, variances: tuple[str, ...] = ("small",), clip: bool = True,
              discretized: bool = True) -> dict[str, torch.Tensor]:
    """L_t (bits/dim, (B,)) for each reverse variance in ``variances``, from one network call.

    x0, noise (B, ...); t (B,) int64 in [0, T-1] (t = 0 is the decoder term L_0).
    ``clip`` clamps x0_hat to [-1, 1], as Ho et al.'s and Nichol & Dhariwal's likelihood code does
    (another valid p_theta, so still a bound); set False for latents.
    """
    abar = schedule.alpha_bar.to(x0.device)[t].reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    x0_hat, v_frac = predict_x0(denoise, schedule, x_t, t, cond)
    x0_hat = x0_hat.to(x0.dtype)
    if clip:
        x0_hat = x0_hat.clamp(-1, 1)
    return {var: vlb_term_x0(schedule, x0, x_t, t, x0_hat, theta_log_variance(schedule, t, x0, var, v_frac),
                             discretized) for var in variances}


def uniform_proposal(schedule: DiscreteSchedule) -> torch.Tensor:
    """p(i) = 1 / (T - 1) over the KL steps i = 1..T-1: (T - 1,) float64."""
    return torch.full((schedule.T - 1,), 1.0 / (schedule.T - 1), dtype=torch.float64)


@torch.no_grad()
def importance_proposal(denoise, schedule: DiscreteSchedule, x0: torch.Tensor, *, cond: dict | None = None,
                        variance: str = "small", n_grid: int = 48, uniform_mix: float = 0.1, clip: bool = True,
                        discretized: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """p(i) ~ sqrt(E[L_i^2]) (Nichol & Dhariwal 2021, section 3.3) over i = 1..T-1, (T - 1,) float64.

    E[L_i^2] is measured on the pilot batch x0 (B, ...) at ``n_grid`` steps spaced geometrically in i
    (L_i varies most at small i), interpolated linearly in between, and mixed with ``uniform_mix`` of
    the uniform proposal so that no weight L_i / p(i) can blow up.
    """
    T = schedule.T
    grid = torch.unique(torch.logspace(0, math.log10(T - 1), n_grid, dtype=torch.float64).round().long())
    rms = []
    for i in grid.tolist():
        t = torch.full((x0.shape[0],), i, dtype=torch.long, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        L = vlb_terms(denoise, schedule, x0, t, noise, cond=cond, variances=(variance,), clip=clip,
                      discretized=discretized)[variance]
        rms.append(float(L.double().pow(2).mean().sqrt()))
    steps = torch.arange(1, T, dtype=torch.float64)
    rms = torch.tensor(rms, dtype=torch.float64)
    g = grid.double()
    hi = torch.searchsorted(g, steps).clamp(1, len(g) - 1)
    w = ((steps - g[hi - 1]) / (g[hi] - g[hi - 1])).clamp(0, 1)
    p = (1 - w) * rms[hi - 1] + w * rms[hi]
    p = p / p.sum()
    return (1 - uniform_mix) * p + uniform_mix * uniform_proposal(schedule)


@torch.no_grad()
def vlb_bits_per_dim(denoise, schedule: DiscreteSchedule, x0: torch.Tensor, *, cond: dict | None = None,
                     variances: tuple[str, ...] = ("small",), proposal: torch.Tensor | None = None, n_t: int = 1,
                     clip: bool = True, discretized: bool = True,
                     generator: torch.Generator | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """The bound L_vlb per image in bits/dim for each variance: {variance: {"total", "prior", "decoder",
    "kl"}}, each (B,) float64.

    x0 (B, ...) data in [-1, 1] (8-bit when ``discretized``). ``proposal`` None sums all T - 1 KL
    terms exactly in t (T - 1 network calls per image); a (T - 1,) proposal over i = 1..T-1 (see
    ``uniform_proposal``, ``importance_proposal``) draws ``n_t`` steps per image and returns the
    unbiased estimate mean_k L_{i_k} / p(i_k). Noise is drawn from ``generator`` (CPU).
    """
    B, T = x0.shape[0], schedule.T

    def term(t: torch.Tensor) -> dict[str, torch.Tensor]:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        out = vlb_terms(denoise, schedule, x0, t.to(x0.device), noise, cond=cond, variances=variances, clip=clip,
                        discretized=discretized)
        return {k: v.double().cpu() for k, v in out.items()}

    kl = {v: torch.zeros(B, dtype=torch.float64) for v in variances}
    if proposal is None:
        for i in range(1, T):
            for v, L in term(torch.full((B,), i, dtype=torch.long)).items():
                kl[v] += L
    else:
        for _ in range(n_t):
            idx = torch.multinomial(proposal, B, replacement=True, generator=generator)
            for v, L in term(idx + 1).items():
                kl[v] += L / proposal[idx] / n_t
    prior = prior_kl(schedule, x0).double().cpu()
    decoder = term(torch.zeros(B, dtype=torch.long))
    return {v: {"total": prior + kl[v] + decoder[v], "prior": prior, "decoder": decoder[v], "kl": kl[v]}
            for v in variances}


def mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    """(mean, standard error std / sqrt(N)) of per-image values (N,)."""
    values = values.double().flatten()
    n = values.numel()
    return float(values.mean()), float(values.std() / math.sqrt(n)) if n > 1 else float("nan")
