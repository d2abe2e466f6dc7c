"""Small layers shared by every network: time embeddings, normalisation, zero-initialised modules."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) continuous timesteps -> (B, dim) (Vaswani et al. 2017; Ho et al. 2020).

    The first half are cosines, the second sines, of t times frequencies from 1 to 1/max_period.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups, reduced to a divisor of ``channels`` when needed."""
    groups = math.gcd(groups, channels)
    return nn.GroupNorm(groups, channels, eps=1e-5)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters: residual branches start as the identity (ADM; ControlNet's zero convs)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class TimestepMLP(nn.Module):
    """Sinusoidal features -> Linear -> SiLU -> Linear: (B,) t -> (B, emb_dim)."""

    def __init__(self, freq_dim: int, emb_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim))
