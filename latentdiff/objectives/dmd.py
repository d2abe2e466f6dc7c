"""Distribution Matching Distillation: DMD (Yin et al. 2023, "One-step Diffusion with Distribution
Matching Distillation") and DMD2 (Yin et al. 2024, "Improved Distribution Matching Distillation for
Fast Image Synthesis").

All in the denoiser's VE view (``precond.Denoiser``: x = x0 + sigma eps, so alpha = 1):

    x = G(z) = D_G(sqrt(1 + sigma_max^2) z, sigma_max)  one step from pure noise; D_G starts as the teacher
    x_t = x + sigma_t eps,  t ~ U[t_min T, t_max T]      the paper's 0.02 T .. 0.98 T
    mu_real = D_teacher(x_t, sigma_t)  (with CFG),  mu_fake = D_fake(x_t, sigma_t)
    grad = (mu_fake - mu_real) / mean_{C,H,W} |mu_real - x|     eq. 7-8: score difference, normalised
    L_DM = 0.5 * mean (x - stopgrad(x - grad))^2         d L_DM / d x = grad / (B C H W)

The fake score D_fake starts as the teacher too and is trained online with the teacher's own
denoising loss on G's (detached) outputs. DMD adds a regression loss d(G(z_i), y_i) on stored pairs
(z_i, y_i = the teacher's deterministic sample from z_i), d an LPIPS-like distance. DMD2 drops it and
adds: several fake-score updates per generator update, a GAN whose discriminator is a small head on
the fake score's middle features (non-saturating losses on noisy real and generated images), and
k-step generation trained by backward simulation (the generator's input at step i is made by
running the generator itself through steps 0..i-1).
"""

from __future__ import annotations

import copy
import dataclasses
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from latentdiff.conditioning.text import null_condition
from latentdiff.config import Config
from latentdiff.nn.layers import group_norm
from latentdiff.objectives.diffusion import DiffusionConfig, DiffusionLoss
from latentdiff.precond import Denoiser, coefficients
from latentdiff.sampling.guidance import CFGDenoiser
from latentdiff.schedules import sigma_grid


@dataclasses.dataclass(frozen=True)
class DMDConfig(Config):
    """DMD (regression_weight > 0) or DMD2 (fake_updates > 1, gan_weight > 0, student_steps > 1)."""

    guidance: float = 2.0             # real-score classifier-free guidance (DMD, section 3.3 / 4)
    t_min: float = 0.02               # noise levels of the DM gradient: t ~ U[t_min T, t_max T]
    t_max: float = 0.98               # (see t_min)
    regression_weight: float = 0.25   # DMD's lambda_reg (paper: 0.25); 0 for DMD2
    regression_share: float = 0.5     # share of the batch's pairs that the regression loss uses
    perceptual_size: int = 32         # side the LPIPS-like EffNet distance sees
    fake_updates: int = 1             # DMD2's two time-scale rule: fake-score updates per generator update (5)
    gan_weight: float = 0.0           # DMD2: generator's GAN loss weight (3e-3 in the paper)
    disc_weight: float = 0.0          # DMD2: discriminator loss weight on the fake score + head (1e-2)
    student_steps: int = 1            # DMD2: k-step generator trained by backward simulation


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


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1))).to(like.device, like.dtype)


def distribution_matching_loss(x: torch.Tensor, real: nn.Module, fake: nn.Module, cond: dict | None,
                               sigma: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The generator's surrogate loss: its gradient in x is ``distribution_matching_grad``. ``real``
    is the frozen teacher (a CFG wrapper for real-score guidance), ``fake`` the fake score; both
    ``D(x, sigma, cond)``. Noise ``eps`` (B, ...) and ``sigma`` (B,) are the caller's draws."""
    with torch.no_grad():
        x_t = x.detach() + _bcast(sigma, x) * eps
        mu_real, mu_fake = real(x_t, sigma, cond).float(), fake(x_t, sigma, cond).float()
        grad = distribution_matching_grad(x.detach().float(), mu_real, mu_fake)
    loss = 0.5 * ((x.float() - (x.float() - grad).detach()) ** 2).mean()
    return loss, {"dm_grad_norm": float(grad.flatten(1).norm(dim=1).mean())}


def unconditional(cond: dict, num_classes: int) -> dict:
    """The unconditional branch of ``cond`` as the teacher learned it (DiffusionLoss's dropout):
    labels -> the null class, text -> the empty prompt (``conditioning.null_condition``)."""
    out = dict(cond)
    if "class_labels" in cond:
        out["class_labels"] = torch.full_like(cond["class_labels"], num_classes)
    if "text" in cond:
        empty = null_condition(*cond["text"].shape)
        out.update({k: v.to(cond[k].device, cond[k].dtype) for k, v in empty.items()})
    return out


def middle_features(denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor, cond: dict | None) -> torch.Tensor:
    """The U-Net's middle-block output (B, C_mid, h, w) at (x, sigma), as the denoiser feeds it."""
    sigma = sigma.to(torch.float64)
    c_in = _bcast(coefficients(sigma, denoiser.parameterisation)[2], x)
    t = denoiser.schedule.sigma_to_t(sigma).to(torch.float32).to(x.device)
    return denoiser.net.encode(x * c_in, t, **(cond or {}))[1]


class DiscriminatorHead(nn.Module):
    """DMD2's classification head: middle features (B, C, h, w) -> real/fake logits (B,)."""

    def __init__(self, channels: int, groups: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), group_norm(channels, groups),
                                  nn.SiLU(), nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.SiLU())
        self.out = nn.Linear(channels, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(h).mean(dim=(2, 3))).squeeze(1)


@contextmanager
def frozen(*modules: nn.Module):
    """No parameter gradients for ``modules`` inside (gradients still flow through to the inputs)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def student_sigmas(denoiser: Denoiser, steps: int) -> torch.Tensor:
    """The k-step generator's input noise levels (k,): trailing timesteps T-1, T-1-T/k, ... (DMD2 uses
    999, 749, 499, 249 for k = 4); k = 1 is sigma_max alone."""
    return sigma_grid(denoiser.schedule, steps, "trailing")[:-1]


class DistributionMatching(nn.Module):
    """The trained part of a DMD/DMD2 run: ``generator`` and ``fake`` (copies of the teacher denoiser),
    a ``head`` for DMD2's GAN; the frozen ``teacher`` is held outside the module's parameters.

    ``forward(batch, rng) -> (loss, logs)``: one update's summed losses; the generator's, the fake
    score's and the discriminator's gradients reach disjoint parameters, so one optimizer step is
    their separate steps. ``batch``: ``"x"`` (B, C, H, W) data (DMD2's real images; DMD's pair
    targets) with its condition (``"label"`` or text keys), and for DMD ``"z"`` the pairs' noise.
    ``distance(a, b) -> (B,)`` is the regression's image distance (given for DMD).
    """

    def __init__(self, teacher: Denoiser, cfg: DMDConfig, diffusion: DiffusionConfig, num_classes: int = 0,
                 distance: nn.Module | None = None):
        super().__init__()
        if teacher.parameterisation == "flow":
            raise ValueError("DMD distils VP teachers (eps, v, x0); a rectified-flow teacher is not supported yet")
        self.cfg, self.num_classes = cfg, num_classes
        self.generator = copy.deepcopy(teacher).requires_grad_(True)
        self.fake = copy.deepcopy(teacher).requires_grad_(True)
        self.head = DiscriminatorHead(teacher.net.width) if cfg.gan_weight or cfg.disc_weight else None
        self._frozen = (teacher.requires_grad_(False), distance)  # not submodules: not trained, not saved
        self.denoising = DiffusionLoss(diffusion.replace(cond_drop_prob=0.0), num_classes)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))  # saved: the TTUR phase resumes

    def generate(self, z: torch.Tensor, cond: dict | None, rng: torch.Generator, step: int | None = None):
        """G's sample (B, C, H, W) from standard-normal z at a random (or given) step of its k-step
        chain: steps 0..i-1 run without gradient (backward simulation), step i with it."""
        sigmas = student_sigmas(self.generator, self.cfg.student_steps)
        i = int(torch.randint(0, len(sigmas), (1,), generator=rng)) if step is None else step
        x = z * (1 + float(sigmas[0]) ** 2) ** 0.5
        for j in range(i):
            with torch.no_grad():
                x0 = self.generator(x, torch.full((len(z),), float(sigmas[j]), device=z.device), cond)
                x = x0 + float(sigmas[j + 1]) * torch.randn(x.shape, generator=rng).to(x)
        return self.generator(x, torch.full((len(z),), float(sigmas[i]), device=z.device), cond)

    def forward(self, batch: dict, rng: torch.Generator) -> tuple[torch.Tensor, dict]:
        cfg, teacher, distance = self.cfg, *self._frozen
        data = batch["x"]
        B, shape = data.shape[0], data.shape
        cond = self.denoising.cond_from_batch(batch, rng)
        generator_turn = int(self.updates) % cfg.fake_updates == 0
        self.updates += 1
        z = torch.randn(shape, generator=rng).to(data)
        with torch.set_grad_enabled(generator_turn and torch.is_grad_enabled()):
            x = self.generate(z, cond, rng)
        loss, logs = torch.zeros((), device=data.device), {}
        if generator_turn:
            real = CFGDenoiser(teacher, cfg.guidance, unconditional(cond, self.num_classes))
            sigma = sample_noise_level(teacher, B, rng, (cfg.t_min, cfg.t_max)).to(data.device)
            eps = torch.randn(shape, generator=rng).to(data)
            loss_dm, more = distribution_matching_loss(x, real, self.fake, cond, sigma, eps)
            loss, logs = loss + loss_dm, {**logs, "dm": float(loss_dm.detach()), **more}
            if cfg.regression_weight:
                k = max(1, int(B * cfg.regression_share))
                pair_cond = {key: value[:k] for key, value in cond.items()}
                loss_reg = distance(self.generate(batch["z"][:k], pair_cond, rng, step=0), data[:k]).mean()
                loss, logs["regression"] = loss + cfg.regression_weight * loss_reg, float(loss_reg.detach())
            if cfg.gan_weight:
                with frozen(self.fake, self.head):
                    logits = self.discriminate(x, cond, rng)
                loss_g = F.softplus(-logits).mean()  # non-saturating generator loss
                loss, logs["gan_g"] = loss + cfg.gan_weight * loss_g, float(loss_g.detach())
        fake_batch = {**batch, "x": x.detach()}
        loss_fake, _ = self.denoising(self.fake.net, fake_batch, rng)
        loss, logs["fake"] = loss + loss_fake, float(loss_fake.detach())
        if cfg.disc_weight:
            loss_d = (F.softplus(-self.discriminate(data, cond, rng)).mean()
                      + F.softplus(self.discriminate(x.detach(), cond, rng)).mean())
            loss, logs["gan_d"] = loss + cfg.disc_weight * loss_d, float(loss_d.detach())
        return loss, logs

    def discriminate(self, x: torch.Tensor, cond: dict, rng: torch.Generator) -> torch.Tensor:
        """Real/fake logits (B,) of images x at a random noise level, from the fake score's features."""
        sigma = sample_noise_level(self.fake, len(x), rng, (self.cfg.t_min, self.cfg.t_max)).to(x.device)
        x_t = x + _bcast(sigma, x) * torch.randn(x.shape, generator=rng).to(x)
        return self.head(middle_features(self.fake, x_t, sigma, cond).float())
