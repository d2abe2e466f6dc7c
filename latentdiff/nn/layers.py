"""Small layers shared by every network: time embeddings, normalisation, zero-initialised modules."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, freq_shift: float = 0.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) continuous timesteps -> (B, dim) (Vaswani et al. 2017; Ho et al. 2020).

    The first half are cosines, the second sines, of t times the frequencies
    max_period^(-i / (dim/2 - freq_shift)), i < dim/2 (``freq_shift`` 1 is diffusers' DiT embedding).
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def group_norm(channels: int, groups: int = 32, eps: float = 1e-5) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups, reduced to a divisor of ``channels`` when needed (``eps``: 1e-5;
    Stable Diffusion's VAE and transformer layers use 1e-6)."""
    groups = math.gcd(groups, channels)
    return nn.GroupNorm(groups, channels, eps=eps)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters: residual branches start as the identity (ADM; ControlNet's zero convs)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class TimestepMLP(nn.Module):
    """Sinusoidal features -> Linear -> SiLU -> Linear: (B,) t -> (B, emb_dim)."""

    def __init__(self, freq_dim: int, emb_dim: int, freq_shift: float = 0.0):
        super().__init__()
        self.freq_dim, self.freq_shift = freq_dim, freq_shift
        self.mlp = nn.Sequential(nn.Linear(freq_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim, freq_shift=self.freq_shift))


def sincos_2d(dim: int, rows: int, cols: int) -> torch.Tensor:
    """Fixed 2D sine-cosine positions of a rows x cols grid, row-major -> (rows * cols, dim): for the
    column x and the row y of each cell, [sin(x w), cos(x w), sin(y w), cos(y w)] with
    w_i = 10000^(-i / (dim / 4)), i < dim / 4 (MAE, He et al. 2022; DiT; SD3's patch embedding)."""
    if dim % 4:
        raise ValueError(f"2D sine-cosine positions need a width divisible by 4, got {dim}")
    w = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    y, x = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                          indexing="ij")
    ax, ay = x.reshape(-1, 1) * w, y.reshape(-1, 1) * w
    return torch.cat([ax.sin(), ax.cos(), ay.sin(), ay.cos()], dim=1).float()
