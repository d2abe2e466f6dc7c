"""The benchmark networks of DESIGN.md section 6, built in latentdiff and in diffusers at the same config.

* bench-S: pixel U-Net 32x32x3, widths (64, 128, 128), 2 res blocks per level, single-head
  self-attention at 16x16 and in the middle block (the DDPM layout), 32 norm groups; additive
  time embedding (diffusers' default "time_embedding_norm"), so both have 6,472,195 parameters.
* bench-L: KL autoencoder (64, 128, 128), 64x64x3 -> 16x16x4, one res block per level and
  attention in the middle block; text U-Net (64, 128, 192), one res block per level, Stable
  Diffusion transformer layers (8 heads, cross-attention on 384-d text states) at 16x16 and 8x8
  and in the middle block.

Each library is wrapped as a :class:`Side` with the same calls, so the timing code never asks
which library it runs.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn

from latentdiff.autoencoders.models import AutoencoderConfig, KLAutoencoder
from latentdiff.nn.unet import UNet, UNetConfig


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Shapes and batch sizes of one benchmark config."""
    name: str
    image_size: int            # the U-Net's input side (latent side for L)
    channels: int              # the U-Net's input channels
    train_batch: int
    forward_batch: int
    sample_images: int
    text_len: int = 0          # > 0: text states (B, text_len, text_dim)
    text_dim: int = 0
    vae_images: int = 0        # > 0: an autoencoder, encode/decode of this many pixel images
    pixel_size: int = 0
    guidance: float = 1.0


CONFIGS = {
    "S": BenchConfig("S", 32, 3, train_batch=32, forward_batch=32, sample_images=16),
    "L": BenchConfig("L", 16, 4, train_batch=16, forward_batch=16, sample_images=4, text_len=16, text_dim=384,
                     vae_images=8, pixel_size=64, guidance=7.5),
}


@dataclasses.dataclass
class Side:
    """One library's networks behind common calls.

    ``eps(x (B, C, H, W), t (B,) float, text (B, L, D) | None) -> (B, C, H, W)``;
    ``encode(px (B, 3, H, W)) -> z (B, 4, H/4, W/4)`` and ``decode(z) -> px`` for L.
    """
    name: str
    net: nn.Module
    eps: Callable
    vae: nn.Module | None = None
    encode: Callable | None = None
    decode: Callable | None = None

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.net, self.vae) if m is not None]


def latentdiff_unet_config(name: str) -> UNetConfig:
    if name == "S":
        return UNetConfig(image_size=32, in_channels=3, channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
                          attention_resolutions=(16,), num_heads=1, dropout=0.0, scale_shift_norm=False)
    return UNetConfig(image_size=16, in_channels=4, channels=64, channel_mult=(1, 2, 3), num_res_blocks=1,
                      attention_resolutions=(16, 8), num_heads=8, dropout=0.0, scale_shift_norm=False,
                      context_dim=384, transformer=True)


def latentdiff_side(name: str) -> Side:
    net = UNet(latentdiff_unet_config(name))
    for p in net.parameters():  # away from the zero init of the output layers, like the other side
        p.data.add_(torch.randn_like(p), alpha=1e-3)
    side = Side("latentdiff", net, lambda x, t, text=None: net(x, t, text=text))
    if name == "L":
        vae = KLAutoencoder(AutoencoderConfig(kind="kl", image_size=64, in_channels=3, channels=64,
                                              channel_mult=(1, 2, 2), num_res_blocks=1, attention=True,
                                              latent_channels=4, scale_factor=1.0))
        side.vae, side.encode, side.decode = vae, vae.encode, vae.decode
    return side


def diffusers_side(name: str) -> Side:
    try:
        from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel
    except ImportError as err:
        raise ImportError(f"the benchmark compares against diffusers, which does not import ({err}); "
                          "pip install diffusers") from err

    if name == "S":
        net = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(64, 128, 128),
                          layers_per_block=2, attention_head_dim=None,
                          down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
        return Side("diffusers", net, lambda x, t, text=None: net(x, t).sample)
    net = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(64, 128, 192),
                               layers_per_block=1, cross_attention_dim=384, attention_head_dim=8,
                               down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(64, 128, 128), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        latent_channels=4, sample_size=64)
    return Side("diffusers", net, lambda x, t, text=None: net(x, t, encoder_hidden_states=text).sample, vae,
                lambda px: vae.encode(px).latent_dist.mode() * vae.config.scaling_factor,
                lambda z: vae.decode(z / vae.config.scaling_factor).sample)


def count(side: Side) -> dict[str, int]:
    """Parameters of the U-Net (and autoencoder)."""
    out = {"unet": sum(p.numel() for p in side.net.parameters())}
    if side.vae is not None:
        out["vae"] = sum(p.numel() for p in side.vae.parameters())
    return out
