"""The autoencoder objective of Latent Diffusion (Rombach et al. 2021, appendix G; Esser et al. 2021):

    L = L_rec + w_p L_perceptual + w_reg L_reg + lambda_adapt w_d L_G      (autoencoder)
      + L_D                                                                (discriminator)

* L_rec: per-pixel L1 or L2, averaged.
* L_perceptual: LPIPS's "baseline" distance (Zhang et al. 2018, eq. 1 with unit channel weights)
  on the frozen EfficientNet-Lite0 that FD-EffNet uses: channel-normalised feature maps at four
  depths, squared differences summed over channels, averaged over positions, summed over depths.
* L_reg: KL(q(z|x) || N(0, I)) per sample divided by the pixels of a sample (so kl_weight 1e-6
  means what it does in Latent Diffusion, whose reconstruction loss is a per-sample sum), or the
  VQ commitment loss.
* L_G = -mean D(x_hat), L_D = mean relu(1 - D(x)) + mean relu(1 + D(x_hat)): the hinge GAN
  losses (Lim & Ye 2017), from step ``disc_start`` on. lambda_adapt = ||grad L_rec|| /
  (||grad L_G|| + 1e-4), gradients at the decoder's last layer (Esser et al. 2021, eq. 7).

Both players are trained by one backward pass and one optimizer: the generator's term goes
through a detached copy of the discriminator's weights, and the discriminator sees detached
images, so neither term moves the other player.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from latentdiff.autoencoders.models import AutoencoderConfig, LatentAutoencoder, build_autoencoder
from latentdiff.config import Config
from latentdiff.eval.features import IMAGENET_MEAN, IMAGENET_STD, load_effnet_lite0
from latentdiff.nn.autoencoder import PatchDiscriminator

PERCEPTUAL_TAPS = (0, 2, 4, 7)  # EfficientNet-Lite0 blocks after which features are compared


@dataclasses.dataclass(frozen=True)
class AutoencoderLossConfig(Config):
    reconstruction: str = "l1"        # l1 | l2
    perceptual_weight: float = 1.0    # 0 disables the EffNet perceptual term
    perceptual_size: int = 64         # images are resized to this side for the feature net
    kl_weight: float = 1e-6           # KL autoencoders only
    disc_weight: float = 0.0          # 0: no discriminator
    disc_start: int = 0               # training steps before the GAN terms switch on
    disc_width: int = 32              # the discriminator's base width


class EffNetPerceptual(nn.Module):
    """d(x, y) (B,) between images (B, C, H, W) in [-1, 1]; frozen, gradients flow to the inputs."""

    def __init__(self, size: int = 64):
        super().__init__()
        self.size = size
        self.net = load_effnet_lite0()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x.float() + 1) / 2
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        h = self.net._swish(self.net._bn0(self.net._conv_stem((x - self.mean) / self.std)))
        taps = []
        for i, block in enumerate(self.net._blocks[: PERCEPTUAL_TAPS[-1] + 1]):
            h = block(h)
            if i in PERCEPTUAL_TAPS:
                taps.append(h / (h.norm(dim=1, keepdim=True) + 1e-10))
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for f in self.features(torch.cat([x, y])):
            a, b = f.chunk(2)
            total = total + (a - b).pow(2).sum(1).mean((1, 2))
        return total


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2), from the MSE over all of them."""
    mse = float((x.detach().float() - y.detach().float()).pow(2).mean())
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: E[relu(1 - D(x))] + E[relu(1 + D(x_hat))]."""
    return F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean()


def adaptive_weight(loss_rec: torch.Tensor, loss_g: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """lambda = ||d L_rec / d w|| / (||d L_G / d w|| + 1e-4), detached (Esser et al. 2021, eq. 7)."""
    g_rec = torch.autograd.grad(loss_rec, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(loss_g, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, max_weight).detach()


class AutoencoderTraining(nn.Module):
    """The module the trainer optimises: autoencoder + optional discriminator + the loss.

    ``forward(x (B, C, H, W), generator) -> (loss (), logs)``. ``steps`` (a buffer, so it is
    saved and resumed) counts training forward passes and switches the GAN terms on.
    """

    def __init__(self, ae_cfg: AutoencoderConfig, loss_cfg: AutoencoderLossConfig):
        super().__init__()
        self.loss_cfg = loss_cfg
        self.autoencoder: LatentAutoencoder = build_autoencoder(ae_cfg)
        self.discriminator = PatchDiscriminator(ae_cfg.in_channels, loss_cfg.disc_width) if loss_cfg.disc_weight else None
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        # Frozen and shared with FD: kept out of the state dict (not a registered child).
        self._perceptual = (EffNetPerceptual(loss_cfg.perceptual_size),) if loss_cfg.perceptual_weight else ()

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        cfg = self.loss_cfg
        x_hat, reg, logs = self.autoencoder.regularised(x, generator)
        err = (x_hat.float() - x.float())
        rec = err.abs().mean() if cfg.reconstruction == "l1" else err.pow(2).mean()
        logs["psnr"] = psnr(x_hat, x)
        loss_rec = rec
        if self._perceptual:
            perceptual = self._perceptual[0].to(x.device)(x_hat, x).mean()
            loss_rec = loss_rec + cfg.perceptual_weight * perceptual
            logs["perceptual"] = float(perceptual.detach())
        weight = cfg.kl_weight / x[0].numel() if self.autoencoder.cfg.kind == "kl" else 1.0
        loss = loss_rec + weight * reg.mean()
        logs["rec"] = float(rec.detach())
        if self.training:
            self.steps += 1
        if self.discriminator is not None:
            loss = loss + self._gan_terms(x, x_hat, loss_rec, logs)
        return loss, logs

    def _gan_terms(self, x: torch.Tensor, x_hat: torch.Tensor, loss_rec: torch.Tensor, logs: dict) -> torch.Tensor:
        disc = self.discriminator
        if int(self.steps) <= self.loss_cfg.disc_start:
            # Off: a zero term keeps the discriminator's weights in the graph (DDP needs every parameter).
            return 0.0 * sum(p.sum() for p in disc.parameters())
        frozen = {name: p.detach() for name, p in disc.named_parameters()}
        loss_g = -functional_call(disc, frozen, (x_hat,)).mean()
        lam = adaptive_weight(loss_rec, loss_g, self.autoencoder.last_layer()) if self.training else torch.tensor(1.0)
        loss_d = hinge_d_loss(disc(x.detach()), disc(x_hat.detach()))
        logs.update(g_loss=float(loss_g.detach()), d_loss=float(loss_d.detach()), adaptive_weight=float(lam))
        return lam * self.loss_cfg.disc_weight * loss_g + loss_d
