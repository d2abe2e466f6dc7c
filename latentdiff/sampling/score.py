"""Score-based samplers: annealed Langevin dynamics and predictor-corrector sampling.

Both use the score of the noised data, by Tweedie's formula (Efron 2011; Vincent 2011)

    score(x, sigma) = grad log p_sigma(x) = (D(x, sigma) - x) / sigma^2,

on the nonzero levels of a descending sigma grid ending in 0, x (B, ...) given at sigmas[0].

Final step. Both end with the x0 jump D(x, sigma_L) at the last nonzero sigma, i.e. one Tweedie
denoising step x + sigma_L^2 score (the "denoise" option of Song & Ermon 2020 and Song et al. 2021),
instead of returning x still carrying noise of std sigma_L.
"""

from __future__ import annotations

import math

import torch

from latentdiff.sampling.ode import call_denoiser, check_grid, randn_like


def score(denoise, x: torch.Tensor, sigma, cond) -> tuple[torch.Tensor, torch.Tensor]:
    """(score (B, ...), x0_hat (B, ...)) at noise level sigma (a float)."""
    x0 = call_denoiser(denoise, x, sigma, cond)
    return (x0 - x) / float(sigma) ** 2, x0


def _mean_norm(v: torch.Tensor) -> float:
    """Per-sample L2 norms of v (B, ...) averaged over the batch (as in Song et al.'s code: a per-sample
    ratio explodes where a sample sits at a mode, ||score|| ~ 0, especially in few dimensions)."""
    return float(v.flatten(1).norm(dim=1).mean())


@torch.no_grad()
def sample_langevin(denoise, x: torch.Tensor, sigmas: torch.Tensor, *, cond=None, generator=None,
                    callback=None, n_steps_each: int = 100, eps: float = 2e-5) -> torch.Tensor:
    """Annealed Langevin dynamics, Song & Ermon 2019, Algorithm 1.

    For each level sigma_i of sigmas[:-1] (sigma_L = sigmas[-2] the smallest), T = ``n_steps_each``
    steps of x <- x + alpha_i/2 score(x, sigma_i) + sqrt(alpha_i) z with alpha_i = eps sigma_i^2 / sigma_L^2;
    then the x0 jump D(x, sigma_L). x (B, ...) -> sample (B, ...). NFE = levels * T + 1.
    """
    check_grid(sigmas, 1, "langevin")
    if n_steps_each < 1:
        raise ValueError(f"langevin needs n_steps_each >= 1, got {n_steps_each}")
    levels = [float(s) for s in sigmas[:-1]]
    sigma_L = levels[-1]
    for i, sigma in enumerate(levels):
        alpha = eps * sigma**2 / sigma_L**2
        for _ in range(n_steps_each):
            s, x0 = score(denoise, x, sigma, cond)
            x = x + alpha / 2 * s + math.sqrt(alpha) * randn_like(x, generator)
        if callback is not None:
            callback(i, sigmas[i], x, x0)
    return call_denoiser(denoise, x, sigma_L, cond)


@torch.no_grad()
def sample_pc(denoise, x: torch.Tensor, sigmas: torch.Tensor, *, cond=None, generator=None, callback=None,
              snr: float = 0.16, n_corrector: int = 1) -> torch.Tensor:
    """Predictor-corrector sampling for the VE SDE, Song et al. 2021 ("Score SDE"), Algorithm 2 with Algorithm 4.

    Predictor (reverse diffusion, ancestral for the VE SDE), sigma_i -> sigma_{i+1}:
        x <- x + (sigma_i^2 - sigma_{i+1}^2) score(x, sigma_i) + sqrt(sigma_i^2 - sigma_{i+1}^2) z.
    Corrector, ``n_corrector`` Langevin steps at sigma_{i+1} with signal-to-noise ratio r = ``snr``:
        g = score(x, sigma_{i+1}),  eps = 2 alpha (r ||z|| / ||g||)^2,  x <- x + eps g + sqrt(2 eps) z,
    with alpha = 1 for the VE SDE (Algorithm 4's alpha_i is VP's 1 - beta_i); norms are batch means.
    The step to sigma = 0 is the noise-free predictor, which is exactly the x0 jump D(x, sigmas[-2]).
    Long steps: the reverse-diffusion predictor adds noise of variance sigma_i^2 - sigma_{i+1}^2, more
    than the level it steps to carries once sigma_i > sqrt(2) sigma_{i+1} (at 3-10 steps the samples
    were noise, sliced W2 up to 70x DDPM's). There the ancestral predictor of Song et al. 2021
    (Appendix F, eq. 47: the same mean, noise std sigma_{i+1} sqrt(sigma_i^2 - sigma_{i+1}^2) / sigma_i,
    equal to first order on short steps) is used.
    x (B, ...) -> sample (B, ...). NFE = steps + n_corrector * (steps - 1).
    """
    n = check_grid(sigmas, 1, "pc")
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        s, x0 = score(denoise, x, sigma, cond)
        if callback is not None:
            callback(i, sigmas[i], x, x0)
        if sigma_next == 0:
            return x0
        var = sigma**2 - sigma_next**2
        std = math.sqrt(var) if var <= sigma_next**2 else sigma_next * math.sqrt(var) / sigma
        x = x + var * s + std * randn_like(x, generator)
        for _ in range(n_corrector):
            g, _ = score(denoise, x, sigma_next, cond)
            z = randn_like(x, generator)
            step = 2 * (snr * _mean_norm(z) / max(_mean_norm(g), 1e-30)) ** 2
            x = x + step * g + math.sqrt(2 * step) * z
    return x
