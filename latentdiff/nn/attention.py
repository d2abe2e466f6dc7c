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

    def __init__(self, channels: int, num_heads: int | None = 1, head_dim: int | None = None, groups: int = 32,
                 eps: float = 1e-5):
        super().__init__()
        self.num_heads = head_count(channels, num_heads, head_dim)
        self.norm = group_norm(channels, groups, eps)
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
                 groups: int = 32, eps: float = 1e-5):
        super().__init__()
        self.num_heads = head_count(channels, num_heads, head_dim)
        self.norm = group_norm(channels, groups, eps)
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


def token_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention on token sequences: q (B, N, C), k and v (B, L, C), mask (B, L) bool
    (True: attend), or (B, N, L) for a mask per query, -> (B, N, C), softmax(q k^T / sqrt(C / heads)) v
    for each of ``heads`` heads."""
    def split(y: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, heads, N, C / heads)
        return y.unflatten(-1, (heads, -1)).transpose(1, 2)
    attn_mask = None if mask is None else (mask[:, None] if mask.ndim == 3 else mask[:, None, None, :]).to(torch.bool)
    h = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=attn_mask)
    return h.transpose(1, 2).flatten(2)


class GEGLU(nn.Module):
    """Gated feed-forward (Shazeer 2020): (B, N, C) -> W_out (a * GELU(g)), [a, g] = W_in x, width mult * C."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.proj_in = nn.Linear(dim, 2 * mult * dim)
        self.proj_out = nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(a * F.gelu(gate))


class GELUMLP(nn.Module):
    """The transformer MLP of ViT, DiT and SD3: (B, N, C) -> fc2(GELU_tanh(fc1 x)), hidden width ratio * C."""

    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, int(dim * ratio))
        self.fc2 = nn.Linear(int(dim * ratio), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer layer on tokens x (B, N, C): self-attention, cross-attention on
    context (B, L, D) when ``context_dim`` > 0, GEGLU feed-forward, each added to x (the layer of
    Latent Diffusion's and Stable Diffusion's U-Nets, Rombach et al. 2021, appendix E). ``self_mask``
    (B, N, N) bool restricts the self-attention (True: query i attends to key j; a causal mask)."""

    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.self_out = nn.Linear(dim, dim)
        self.q = nn.Linear(dim, dim, bias=False) if context_dim else None
        self.kv = nn.Linear(context_dim, 2 * dim, bias=False) if context_dim else None
        self.cross_out = nn.Linear(dim, dim) if context_dim else None
        self.ff = GEGLU(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, self_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        x = x + self.self_out(token_attention(q, k, v, self.heads, self_mask))
        if self.kv is not None:
            k, v = self.kv(context.to(x.dtype)).chunk(2, dim=-1)
            x = x + self.cross_out(token_attention(self.q(self.norm2(x)), k, v, self.heads, mask))
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Residual transformer on a feature map (Rombach et al. 2021): (B, C, H, W), context (B, L, D),
    mask (B, L) -> (B, C, H, W) = x + proj_out(TransformerBlock(proj_in(GN(x)) as H W tokens)).
    ``proj_in`` and ``proj_out`` are 1x1 convolutions, or with ``linear`` the same maps as Linears on
    the tokens (Stable Diffusion 2.x's layout; only the weights' shapes differ). ``eps``: the
    GroupNorm's (Stable Diffusion's: 1e-6). The output projection starts at zero, so a new layer is
    the identity."""

    def __init__(self, channels: int, context_dim: int, num_heads: int | None = 1, head_dim: int | None = None,
                 groups: int = 32, eps: float = 1e-5, linear: bool = False):
        super().__init__()
        self.linear = linear
        self.norm = group_norm(channels, groups, eps)
        self.proj_in = nn.Linear(channels, channels) if linear else nn.Conv2d(channels, channels, 1)
        self.block = TransformerBlock(channels, context_dim, head_count(channels, num_heads, head_dim))
        self.proj_out = zero_module(nn.Linear(channels, channels) if linear else nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        as_tokens = lambda y: y.permute(0, 2, 3, 1).reshape(B, H * W, C)  # noqa: E731
        as_map = lambda y: y.reshape(B, H, W, C).permute(0, 3, 1, 2)      # noqa: E731
        if self.linear:
            h = self.block(self.proj_in(as_tokens(self.norm(x))), context, mask)
            return x + as_map(self.proj_out(h))
        h = self.block(as_tokens(self.proj_in(self.norm(x))), context, mask)
        return x + self.proj_out(as_map(h))
