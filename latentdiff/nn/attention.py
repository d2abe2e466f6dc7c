"""Multi-head self-attention over feature maps through ``scaled_dot_product_attention``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latentdiff.nn.layers import group_norm, zero_module


class SelfAttention2d(nn.Module):
    """Residual self-attention on (B, C, H, W): x + proj(softmax(QK^T/sqrt(d)) V).

    Heads: ``num_heads`` if given, else C // head_dim. The output projection
    starts at zero so a new block is the identity (as ADM does).
    """

    def __init__(self, channels: int, num_heads: int | None = 1, head_dim: int | None = None, groups: int = 32):
        super().__init__()
        if num_heads is None:
            num_heads = max(1, channels // (head_dim or channels))
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.num_heads, C // self.num_heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, d)
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(h)
