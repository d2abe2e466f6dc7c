"""Convolutional encoder and decoder of the latent-diffusion autoencoders, and their patch discriminator.

Encoder and decoder follow Rombach et al. 2021 (LDM, appendix G): ResBlocks without a time
embedding, a strided-conv downsample between levels, a middle ResBlock (+ optional attention)
ResBlock, then GroupNorm-SiLU-conv to the latent moments. The decoder mirrors it. With L
channel multipliers the spatial downsampling factor is f = 2^(L - 1). ``eps`` (every GroupNorm) and
``asymmetric`` (the downsampling padding, see :class:`Downsample`) choose between our layout
(1e-5, padding 1) and Stable Diffusion's (1e-6, zeros at the bottom and right only).

The discriminator is a PatchGAN (Isola et al. 2017, section 3.2): a few 4x4 convs whose output
is a map of real/fake logits, one per overlapping patch, as in Esser et al. 2021 (VQGAN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latentdiff.nn.attention import SelfAttention2d
from latentdiff.nn.blocks import Downsample, ResBlock, Upsample
from latentdiff.nn.layers import group_norm


def _middle(width: int, attention: bool, groups: int, eps: float) -> nn.Sequential:
    layers: list[nn.Module] = [ResBlock(width, width, 0, groups=groups, eps=eps)]
    if attention:
        layers.append(SelfAttention2d(width, 1, groups=groups, eps=eps))
    layers.append(ResBlock(width, width, 0, groups=groups, eps=eps))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """(B, C_in, H, W) -> (B, out_channels, H / f, W / f)."""

    def __init__(self, in_channels: int, out_channels: int, channels: int, channel_mult: tuple[int, ...],
                 num_res_blocks: int, attention: bool = False, groups: int = 32, eps: float = 1e-5,
                 asymmetric: bool = False):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        layers: list[nn.Module] = []
        width = channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(width, channels * mult, 0, groups=groups, eps=eps))
                width = channels * mult
            if level < len(channel_mult) - 1:
                layers.append(Downsample(width, asymmetric))
        self.down = nn.Sequential(*layers)
        self.middle = _middle(width, attention, groups, eps)
        self.norm_out = group_norm(width, groups, eps)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.middle(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, in_channels, h, w) -> (B, C_out, h f, w f); mirrors :class:`Encoder`."""

    def __init__(self, in_channels: int, out_channels: int, channels: int, channel_mult: tuple[int, ...],
                 num_res_blocks: int, attention: bool = False, groups: int = 32, eps: float = 1e-5):
        super().__init__()
        width = channels * channel_mult[-1]
        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1)
        self.middle = _middle(width, attention, groups, eps)
        layers: list[nn.Module] = []
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                layers.append(ResBlock(width, channels * mult, 0, groups=groups, eps=eps))
                width = channels * mult
            if level > 0:
                layers.append(Upsample(width))
        self.up = nn.Sequential(*layers)
        self.norm_out = group_norm(width, groups, eps)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.middle(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


class PatchDiscriminator(nn.Module):
    """(B, C, H, W) -> (B, 1, H', W') real/fake logits, one per patch.

    Two stride-2 and two stride-1 4x4 convs (a 3-layer PatchGAN); GroupNorm instead of
    BatchNorm so that the logits of a sample never depend on the rest of its batch.
    """

    def __init__(self, in_channels: int, width: int = 32, groups: int = 8):
        super().__init__()
        act = nn.LeakyReLU(0.2)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 4, 2, 1), act,
            nn.Conv2d(width, 2 * width, 4, 2, 1), group_norm(2 * width, groups), act,
            nn.Conv2d(2 * width, 4 * width, 4, 1, 1), group_norm(4 * width, groups), act,
            nn.Conv2d(4 * width, 1, 4, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
