"""The autoencoders of latent diffusion (Rombach et al. 2021, section 3.1) behind one interface.

Every autoencoder here offers (DESIGN.md section 3)

* ``encode(px (B, C, H, W)) -> z (B, c, H/f, W/f)``: the diffusion model's data, scaled;
* ``decode(z) -> px`` in about [-1, 1];
* ``latent_shape`` (c, H/f, W/f) for its image size.

``z = (E(x) - shift) * scale``: the scale factor is measured on data after the autoencoder is
trained (1 / std of the latents, as Latent Diffusion does, section 4.3.2 and appendix G) and
stored in the checkpoint's config, so the diffusion model sees latents of about unit variance.

* KL-regularised (:class:`KLAutoencoder`): the encoder gives a diagonal Gaussian posterior
  q(z|x) = N(mu, diag(sigma^2)); training samples from it and adds a small KL(q || N(0, I)).
  ``encode`` uses the mean, so encoding is deterministic and cacheable.
* VQ-regularised (:class:`VQAutoencoder`): ``encode`` returns the encoder output *before*
  quantisation and ``decode`` quantises first ("the quantisation layer is absorbed by the
  decoder", Rombach et al. 2021, section 3.1).
* :class:`IdentityAutoencoder` for pixel space: the same code path with f = 1.

``layout="ldm"`` and ``quant_conv=True`` make the KL autoencoder exactly Stable Diffusion's
(diffusers' ``AutoencoderKL``): latentdiff.interop.vae converts the weights both ways.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from latentdiff.autoencoders.vq import VectorQuantizer
from latentdiff.config import Config
from latentdiff.nn.autoencoder import Decoder, Encoder


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig(Config):
    kind: str = "kl"                       # kl | vq
    image_size: int = 32                   # side of the input images
    in_channels: int = 1                   # image channels (1 grey, 3 RGB)
    channels: int = 64                     # base width
    channel_mult: tuple[int, ...] = (1, 2, 2)  # f = 2^(len - 1)
    num_res_blocks: int = 1                # ResBlocks per level
    attention: bool = False                # self-attention in the middle blocks
    norm_groups: int = 32                  # GroupNorm groups
    latent_channels: int = 4               # channels c of the latents (B, c, H/f, W/f)
    num_codes: int = 512                   # VQ codebook size
    beta: float = 0.25                     # VQ commitment weight
    scale_factor: float | None = None      # 1 / std of E(x) on data; None until measured
    shift_factor: float = 0.0              # subtracted from E(x) before scaling
    layout: str = "latentdiff"             # latentdiff (GroupNorm eps 1e-5, pad 1) | ldm (SD's VAE: 1e-6, asymmetric)
    quant_conv: bool = False               # KL: 1x1 convs on the moments (2c -> 2c) and on z (c -> c), as LDM / SD

    @property
    def norm_eps(self) -> float:
        """The GroupNorm epsilon of the layout."""
        return 1e-6 if self.layout == "ldm" else 1e-5


class DiagonalGaussian:
    """q(z|x) = N(mean, diag(exp(logvar))) for (B, c, h, w) moments."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        self.mean, self.logvar = mean, logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator).to(self.mean.device, self.mean.dtype)
        return self.mean + self.std * noise

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2) per sample: (B,)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


class LatentAutoencoder(nn.Module):
    """Shared scaling and shapes; subclasses define ``encode_raw``, ``decode_raw`` and ``regularised``."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        self.factor = 2 ** (len(cfg.channel_mult) - 1)
        if cfg.image_size % self.factor:
            raise ValueError(f"image_size {cfg.image_size} is not divisible by the downsampling factor {self.factor}")
        if cfg.layout not in ("latentdiff", "ldm"):
            raise ValueError(f"unknown autoencoder layout {cfg.layout!r}; valid: latentdiff, ldm")
        if cfg.quant_conv and cfg.kind != "kl":
            raise ValueError(f"quant_conv is an option of the KL autoencoder, not of kind {cfg.kind!r}")
        net = dict(channels=cfg.channels, channel_mult=cfg.channel_mult, num_res_blocks=cfg.num_res_blocks,
                   attention=cfg.attention, groups=cfg.norm_groups, eps=cfg.norm_eps)
        moments = 2 * cfg.latent_channels if cfg.kind == "kl" else cfg.latent_channels
        self.encoder = Encoder(cfg.in_channels, moments, asymmetric=cfg.layout == "ldm", **net)
        self.decoder = Decoder(cfg.latent_channels, cfg.in_channels, **net)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.cfg.image_size // self.factor
        return (self.cfg.latent_channels, side, side)

    @property
    def scale(self) -> float:
        if self.cfg.scale_factor is None:
            raise ValueError("this autoencoder's latent scale factor has not been measured yet "
                             "(latentdiff.pipelines.autoencoder.measure_latent_scale)")
        return self.cfg.scale_factor

    def encode(self, px: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> scaled latents (B, c, H/f, W/f)."""
        return (self.encode_raw(px) - self.cfg.shift_factor) * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, c, h, w) -> images (B, C, h f, w f)."""
        return self.decode_raw(z / self.scale + self.cfg.shift_factor)

    def last_layer(self) -> torch.Tensor:
        """The decoder's output weight (VQGAN's adaptive GAN weight is computed on it)."""
        return self.decoder.conv_out.weight


class KLAutoencoder(LatentAutoencoder):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__(cfg)
        c = cfg.latent_channels
        # LDM's 1x1 convs between the encoder and the moments, and between z and the decoder.
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1) if cfg.quant_conv else nn.Identity()
        self.post_quant_conv = nn.Conv2d(c, c, 1) if cfg.quant_conv else nn.Identity()

    def posterior(self, px: torch.Tensor) -> DiagonalGaussian:
        """(B, C, H, W) -> q(z|x) with mean and logvar (B, c, H/f, W/f)."""
        return DiagonalGaussian(*self.quant_conv(self.encoder(px)).chunk(2, dim=1))

    def encode_raw(self, px: torch.Tensor) -> torch.Tensor:
        return self.posterior(px).mean

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def regularised(self, px: torch.Tensor, generator: torch.Generator | None = None):
        """Training pass: (reconstruction (B, C, H, W), per-sample KL (B,), logs)."""
        q = self.posterior(px)
        kl = q.kl()
        return self.decode_raw(q.sample(generator)), kl, {"kl": float(kl.detach().mean()),
                                                          "posterior_std": float(q.std.detach().mean())}


class VQAutoencoder(LatentAutoencoder):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__(cfg)
        self.quantizer = VectorQuantizer(cfg.num_codes, cfg.latent_channels, cfg.beta)

    def encode_raw(self, px: torch.Tensor) -> torch.Tensor:
        return self.encoder(px)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer(z)[0])

    def regularised(self, px: torch.Tensor, generator: torch.Generator | None = None):
        """Training pass: (reconstruction, commitment loss broadcast to (B,), logs)."""
        z_q, commitment, codes = self.quantizer(self.encoder(px))
        logs = {"commitment": float(commitment.detach()),
                "batch_codes_used": codes.unique().numel() / self.cfg.num_codes}
        return self.decoder(z_q), commitment.expand(px.shape[0]), logs


class IdentityAutoencoder(nn.Module):
    """Pixel space: encode and decode are the identity, latent_shape the image shape."""

    def __init__(self, channels: int, image_size: int):
        super().__init__()
        self.latent_shape = (channels, image_size, image_size)

    def encode(self, px: torch.Tensor) -> torch.Tensor:
        return px

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


def build_autoencoder(cfg: AutoencoderConfig) -> LatentAutoencoder:
    if cfg.kind == "kl":
        return KLAutoencoder(cfg)
    if cfg.kind == "vq":
        return VQAutoencoder(cfg)
    raise ValueError(f"unknown autoencoder kind {cfg.kind!r}; valid: kl, vq")
