"""Multi-head self- and cross-attention over feature maps through ``scaled_dot_product_attention``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latentdiff.nn.layers import group_norm, zero_module


def head_count(channels: int, num_heads: int | None, head_dim: int | None) -> int:
    """``num_heads`` if given, else channels // head_dim; it must divide ``channels``."""
    if num_heads is None:
        num_heads = max(1, channels // (head_dim or channels))
    if channels % num_heads:
        raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
    return num_heads


class SelfAttention2d(nn.Module):
    """Residual self-attention on (B, C, H, W): x + proj(softmax(QK^T/sqrt(d)) V).

    Heads: ``num_heads`` if given, else C // head_dim. The output projection
    starts at zero so a new block is the identity (as ADM does).
    """

    def __init__(self, channels: int, num_heads: int | None = 1, head_dim: int | None = None, groups: int = 32):
        super().__init__()
        self.num_heads = head_count(channels, num_heads, head_dim)
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


class CrossAttention2d(nn.Module):
    """Residual cross-attention of feature maps on a token sequence (Rombach et al. 2021, eq. 4):
    x (B, C, H, W) queries, context (B, L, D) keys and values, ``mask`` (B, L) bool with True for
    real tokens (padding is never attended to). The output projection starts at zero."""

    def __init__(self, channels: int, context_dim: int, num_heads: int | None = 1, head_dim: int | None = None,
                 groups: int = 32):
        super().__init__()
        self.num_heads = head_count(channels, num_heads, head_dim)
        self.norm = group_norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        heads, d = self.num_heads, C // self.num_heads
        q = self.q(self.norm(x)).reshape(B, heads, d, H * W).transpose(-1, -2)        # (B, heads, HW, d)
        k, v = self.kv(context.to(x.dtype)).reshape(B, -1, 2, heads, d).permute(2, 0, 3, 1, 4)  # (B, heads, L, d)
        attn_mask = None if mask is None else mask[:, None, None, :].to(torch.bool)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))
