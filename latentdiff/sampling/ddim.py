"""DDIM (Song et al. 2021, eq. 12) in the sigma form.

In the VE view (x = x0 + sigma n) DDIM is x_s = x0 + sqrt(sigma_s^2 - c^2) eps_hat + c z with
eps_hat = (x_t - x0)/sigma_t and c = eta * sqrt(sigma_s^2 (sigma_t^2 - sigma_s^2) / sigma_t^2):
eta = 0 is the deterministic ODE step, eta = 1 the DDPM posterior (sampling/ddpm.py).
"""

from __future__ import annotations

import torch

from latentdiff.sampling.ode import check_grid, denoise_step, randn_like


@torch.no_grad()
def sample_ddim(denoise, x: torch.Tensor, sigmas: torch.Tensor, *, cond=None, generator=None, callback=None,
                eta: float = 0.0) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12): deterministic at eta = 0, the DDPM posterior at eta = 1.

    x (B, ...) at sigmas[0] -> sample at sigmas[-1] (0). One model call per step."""
    check_grid(sigmas, 1, "ddim")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise_step(denoise, x, sigmas, i, cond, callback)
        eps_hat = (x - x0) / sigma.to(x.dtype)
        c = eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt()
        x = x0 + (sigma_next**2 - c**2).sqrt().to(x.dtype) * eps_hat
        if eta > 0 and sigma_next > 0:
            x = x + c.to(x.dtype) * randn_like(x, generator)
    return x
