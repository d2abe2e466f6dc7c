"""One-step samplers in sigma: Euler, Euler-ancestral, Heun with churn (Karras et al. 2022, "EDM").

All samplers here integrate the probability-flow ODE of the variance-exploding view,

    dx/dsigma = d(x, sigma) = (x - D(x, sigma)) / sigma            (EDM eq. 3 with s(t) = 1, sigma(t) = t),

on a descending float64 grid ``sigmas`` ending in 0, x (B, ...) given at sigmas[0].

Final step. A step to sigma = 0 with Euler is x + (0 - sigma) (x - x0)/sigma = x0: every sampler
in this file ends with the data prediction at the last nonzero sigma (the "x0 jump"), as EDM
Algorithm 1/2 do (their last step is Euler). The helpers below are shared by the other sampler files.
"""

from __future__ import annotations

import math

import torch


def check_grid(sigmas: torch.Tensor, min_steps: int, name: str) -> int:
    """Validate a descending sigma grid ending in 0 and return its number of steps ``len(sigmas) - 1``.

    Raises ValueError when the grid has fewer than ``min_steps`` steps (the order of a multistep
    method needs that much history) or is not strictly descending (a repeated sigma makes the step
    h = 0 and a multistep ratio h_prev / h infinite).
    """
    n = len(sigmas) - 1
    if n < min_steps:
        raise ValueError(f"{name} needs at least {min_steps} steps, got {n}")
    if float(sigmas[-1]) != 0.0:
        raise ValueError(f"{name}: sigmas must end in 0, got {float(sigmas[-1])}")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError(f"{name}: sigmas must be strictly descending (no repeated sigma)")
    return n


def call_denoiser(denoise, x: torch.Tensor, sigma, cond) -> torch.Tensor:
    """D(x (B, ...), sigma as a (B,) tensor of x's dtype and device, cond) -> x0_hat (B, ...)."""
    s = torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)  # a fill: no host-device copy
    return denoise(x, s, cond)


def denoise_step(denoise, x: torch.Tensor, sigmas: torch.Tensor, i: int, cond, callback) -> torch.Tensor:
    """The first move of every sampler step: x0_hat = D(x, sigmas[i]), reported to ``callback(i, sigma, x, x0_hat)``."""
    x0 = call_denoiser(denoise, x, sigmas[i], cond)
    if callback is not None:
        callback(i, sigmas[i], x, x0)
    return x0


def randn_like(x: torch.Tensor, generator) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn on the CPU generator (DESIGN.md: seeds)."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


@torch.no_grad()
def sample_euler(denoise, x: torch.Tensor, sigmas: torch.Tensor, *, cond=None, generator=None,
                 callback=None) -> torch.Tensor:
    """Euler's method on the PF-ODE (EDM Algorithm 1 without its 2nd-order correction). First order.

    x (B, ...) at sigmas[0] -> sample (B, ...). NFE = steps; the step to 0 is the x0 jump.
    """
    check_grid(sigmas, 1, "euler")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise_step(denoise, x, sigmas, i, cond, callback)
        d = (x - x0) / sigma.to(x.dtype)
        x = x + (sigma_next - sigma).to(x.dtype) * d
    return x


@torch.no_grad()
def sample_euler_a(denoise, x: torch.Tensor, sigmas: torch.Tensor, *, cond=None, generator=None,
                   callback=None, eta: float = 1.0) -> torch.Tensor:
    """Euler-ancestral: an Euler ODE step down to sigma_down, then fresh noise of std sigma_up.

    The ancestral split (Ho et al. 2020's posterior in the VE view, as in DDIM eq. 16) is
    sigma_up = eta * sigma_next sqrt(1 - sigma_next^2/sigma^2), sigma_down = sqrt(sigma_next^2 - sigma_up^2);
    at eta = 1 this step equals DDPM's ``small`` variance step and DDIM(eta=1) exactly.
    x (B, ...) at sigmas[0] -> sample (B, ...). NFE = steps; the step to 0 is the x0 jump.
    """
    check_grid(sigmas, 1, "euler_a")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise_step(denoise, x, sigmas, i, cond, callback)
        sigma_up = min(float(sigma_next), eta * float(sigma_next * (1 - sigma_next**2 / sigma**2).sqrt()))
        sigma_down = math.sqrt(float(sigma_next) ** 2 - sigma_up**2)
        x = x + (sigma_down - float(sigma)) * (x - x0) / float(sigma)
        if sigma_up > 0:
            x = x + sigma_up * randn_like(x, generator)
    return x


@torch.no_grad()
def sample_consistency(denoise, x: torch.Tensor, sigmas: torch.Tensor, *, cond=None, generator=None,
                       callback=None) -> torch.Tensor:
    """Multistep sampling of a few-step generator (Song et al. 2023, "Consistency Models", Algorithm 1;
    DMD2's backward simulation): x0 = D(x, sigma_i), then x = x0 + sigma_{i+1} z with fresh noise z.
    One step is D(x_T, sigma_max). x (B, ...) at sigmas[0] -> sample (B, ...). NFE = steps."""
    check_grid(sigmas, 1, "consistency")
    for i in range(len(sigmas) - 1):
        x = denoise_step(denoise, x, sigmas, i, cond, callback)
        if sigmas[i + 1] > 0:
            x = x + float(sigmas[i + 1]) * randn_like(x, generator)
    return x


HEUN_MAX_RATIO = 3.0  # largest sigma / sigma_next that keeps Heun's correction; see sample_heun


@torch.no_grad()
def sample_heun(denoise, x: torch.Tensor, sigmas: torch.Tensor, *, cond=None, generator=None, callback=None,
                S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = float("inf"),
                S_noise: float = 1.0) -> torch.Tensor:
    """EDM Algorithm 2 (Karras et al. 2022): Heun's 2nd-order method with stochastic churn.

    At each sigma_i in [S_tmin, S_tmax] the noise level is raised to t_hat = sigma_i (1 + gamma),
    gamma = min(S_churn / N, sqrt(2) - 1), by adding noise of std S_noise sqrt(t_hat^2 - sigma_i^2);
    then one Heun step to sigma_{i+1}. S_churn = 0 (default) is the deterministic EDM Algorithm 1.

    Long steps are Euler. The correction weighs the slope at sigma_{i+1}, where the PF-ODE's
    fastest rate is 1/sigma_{i+1} (the noise direction), by the whole step; Heun's method is stable
    on the real axis only for step x rate <= 2, i.e. (t_hat - sigma_{i+1}) / sigma_{i+1} <= 2. So a
    step with t_hat / sigma_{i+1} > HEUN_MAX_RATIO = 3 is taken as the Euler step (EDM Algorithm 1's
    line 5 alone, = DDIM) and costs one model call. Without this, coarse grids returned garbage
    (ODE-RMSE up to 75x DDIM's at 3-10 steps on the exact-score mixture); at 15 steps on the
    standard spacings at most 2 of the 14 steps are that long, at 30+ steps none on karras/logsnr.
    x (B, ...) at sigmas[0] -> sample (B, ...). NFE = 2 steps - 1 - (Euler steps): the step to 0 is the x0 jump.
    """
    n = check_grid(sigmas, 2, "heun")
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        gamma = min(S_churn / n, math.sqrt(2) - 1) if S_tmin <= sigma <= S_tmax else 0.0
        t_hat = sigma * (1 + gamma)
        if gamma > 0:
            x = x + S_noise * math.sqrt(t_hat**2 - sigma**2) * randn_like(x, generator)
        x0 = call_denoiser(denoise, x, t_hat, cond)
        if callback is not None:
            callback(i, sigmas[i], x, x0)
        d = (x - x0) / t_hat
        x_next = x + (sigma_next - t_hat) * d
        if sigma_next > 0 and t_hat <= HEUN_MAX_RATIO * sigma_next:  # trapezoid with the endpoint slope
            d_next = (x_next - call_denoiser(denoise, x_next, sigma_next, cond)) / sigma_next
            x_next = x + (sigma_next - t_hat) * 0.5 * (d + d_next)
        x = x_next
    return x
