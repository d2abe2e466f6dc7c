"""Distribution Matching Distillation (Yin et al. 2023, "One-step Diffusion with Distribution Matching
Distillation"): the generator's losses and the fake score's loss. (A first part of issue 7: the
training run, the DMD regression loss, DMD2's GAN head and multi-step sampling are still to come.)

All in the denoiser's VE view (``precond.Denoiser``: x = x0 + sigma eps, so alpha = 1):

    x = G(z) = D_G(sigma_max z, sigma_max)              one step from pure noise; D_G starts as the teacher
    x_t = x + sigma_t eps,  t ~ U[t_min, t_max]         the paper's 0.02 T .. 0.98 T
    mu_real = D_teacher(x_t, sigma_t)  (with CFG),  mu_fake = D_fake(x_t, sigma_t)
    grad = (mu_fake - mu_real) / mean_{C,H,W} |mu_real - x|     eq. 7-8: score difference, normalised
    L_DM = 0.5 * mean (x - stopgrad(x - grad))^2        d L_DM / d x = grad / (C H W B)

and the fake score D_fake is trained online with the denoising loss on G's (detached) outputs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from latentdiff.precond import Denoiser


class OneStepGenerator(nn.Module):
    """``G(z (B, C, H, W) standard normal, cond) -> x (B, C, H, W)``: a copy of the teacher denoiser
    evaluated at sigma_max, so at initialisation G is the teacher's one-step x0 prediction."""

    def __init__(self, teacher: Denoiser):
        super().__init__()
        self.denoiser = copy.deepcopy(teacher).requires_grad_(True)
        self.sigma_max = float(teacher.sigma_max)

    def forward(self, z: torch.Tensor, cond: dict | None = None) -> torch.Tensor:
        sigma = torch.full((z.shape[0],), self.sigma_max, device=z.device)
        return self.denoiser(z * self.sigma_max, sigma, cond)


def distribution_matching_grad(x: torch.Tensor, mu_real: torch.Tensor, mu_fake: torch.Tensor) -> torch.Tensor:
    """The DMD gradient on generated x (B, ...): (mu_fake - mu_real), divided per sample by the mean
    absolute distance between x and the real score's denoised estimate (Yin et al. 2023, eq. 8)."""
    dims = tuple(range(1, x.ndim))
    weight = (mu_real - x).abs().mean(dim=dims, keepdim=True).clamp_min(1e-8)
    return (mu_fake - mu_real) / weight


def sample_noise_level(denoiser: Denoiser, batch_size: int, generator: torch.Generator,
                       t_range: tuple[float, float] = (0.02, 0.98)) -> torch.Tensor:
    """(B,) sigmas of timesteps t ~ U{t_min T .. t_max T} of the denoiser's discrete schedule."""
    T = denoiser.schedule.T
    lo, hi = int(t_range[0] * T), int(t_range[1] * T)
    t = torch.randint(lo, hi, (batch_size,), generator=generator)
    return denoiser.schedule.t_to_sigma(t.double()).float()


def distribution_matching_loss(x: torch.Tensor, real: nn.Module, fake: nn.Module, cond: dict | None,
                               sigma: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The generator's surrogate loss: its gradient in x is ``distribution_matching_grad``. ``real``
    is the frozen teacher (a CFG wrapper for real-score guidance), ``fake`` the fake score; both
    ``D(x, sigma, cond)``. Noise ``eps`` (B, ...) and ``sigma`` (B,) are the caller's draws."""
    with torch.no_grad():
        x_t = x.detach() + sigma.view(-1, *([1] * (x.ndim - 1))).to(x.dtype) * eps
        mu_real, mu_fake = real(x_t, sigma, cond), fake(x_t, sigma, cond)
        grad = distribution_matching_grad(x.detach(), mu_real, mu_fake)
    loss = 0.5 * ((x - (x - grad).detach()) ** 2).mean()
    return loss, {"dm_grad_norm": float(grad.flatten(1).norm(dim=1).mean())}


def fake_score_loss(fake: Denoiser, x: torch.Tensor, cond: dict | None, sigma: torch.Tensor,
                    eps: torch.Tensor) -> torch.Tensor:
    """Denoising loss of the fake score on generated samples x (detached): the x0 error weighted by
    1 + SNR = 1 + 1/sigma^2, which is the v-prediction MSE (Salimans & Ho 2022)."""
    x = x.detach()
    s = sigma.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    x0_hat = fake(x + s * eps, sigma, cond)
    return (((x0_hat - x) ** 2) * (1 / s ** 2 + 1)).mean()
