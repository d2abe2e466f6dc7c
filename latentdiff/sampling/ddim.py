"""DDIM (Song et al. 2021, eq. 12) and DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in the sigma form.

In the VE view (x = x0 + sigma n) DDIM is x_s = x0 + sqrt(sigma_s^2 - c^2) eps_hat + c z with
eps_hat = (x_t - x0)/sigma_t and c = eta * sqrt(sigma_s^2 (sigma_t^2 - sigma_s^2) / sigma_t^2):
eta = 0 is the deterministic ODE step, eta = 1 the DDPM posterior (sampling/ddpm.py).
"""

from __future__ import annotations

import torch

from latentdiff.sampling.ode import call_denoiser, check_grid, randn_like


@torch.no_grad()
def sample_ddim(denoise, x: torch.Tensor, sigmas: torch.Tensor, *, cond=None, generator=None, callback=None,
                eta: float = 0.0) -> torch.Tensor:
    """x (B, ...) at sigmas[0] -> sample at sigmas[-1] (0). One model call per step."""
    check_grid(sigmas, 1, "ddim")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = call_denoiser(denoise, x, sigma, cond)
        if callback is not None:
            callback(i, sigma, x, x0)
        eps_hat = (x - x0) / sigma.to(x.dtype)
        c = eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt()
        x = x0 + (sigma_next**2 - c**2).sqrt().to(x.dtype) * eps_hat
        if eta > 0 and sigma_next > 0:
            x = x + c.to(x.dtype) * randn_like(x, generator)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoise, x: torch.Tensor, sigmas: torch.Tensor, *, cond=None, generator=None,
                    callback=None) -> torch.Tensor:
    """DPM-Solver++(2M), multistep second order in lambda = -log sigma; the last step to sigma = 0 is x0.

    With h = lambda_next - lambda and r = h_prev / h, the data prediction is extrapolated
    as D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1} and x_next = (sigma_next/sigma) x - expm1(-h) D.
    """
    check_grid(sigmas, 1, "dpmpp_2m")
    x0_prev, h_prev = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = call_denoiser(denoise, x, sigma, cond)
        if callback is not None:
            callback(i, sigma, x, x0)
        if sigma_next == 0:
            x = x0
            break
        h = torch.log(sigma / sigma_next)
        d = x0
        if x0_prev is not None:
            r = h_prev / h
            d = (1 + 1 / (2 * r)).to(x.dtype) * x0 - (1 / (2 * r)).to(x.dtype) * x0_prev
        x = (sigma_next / sigma).to(x.dtype) * x - torch.expm1(-h).to(x.dtype) * d
        x0_prev, h_prev = x0, h
    return x
