"""U-Net building blocks: time-conditioned ResBlock, resampling, and a sequential container.

ResBlock follows Dhariwal & Nichol 2021 (ADM): GroupNorm-SiLU-conv, then the
time/class embedding enters either by addition or as a scale-shift of the
second normalisation ("AdaGN", h = GN(h) (1 + s) + b), dropout, and a
zero-initialised second conv, so each block starts as the identity. With
``emb_dim=0`` the block has no embedding input (the autoencoders' ResBlock,
Rombach et al. 2021).

Gradient checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"): with
``set_grad_checkpointing(net, True)`` every ResBlock and attention layer of the U-Net, and every
transformer block of DiT and MMDiT, keeps only its inputs in the forward pass and recomputes its
activations in the backward pass (``torch.utils.checkpoint``, non-reentrant; the RNG state is
replayed, so dropout draws the same masks and the gradients equal those without it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from latentdiff.nn.attention import CrossAttention2d, SelfAttention2d, SpatialTransformer
from latentdiff.nn.layers import group_norm, zero_module


class ResBlock(nn.Module):
    """(B, C_in, H, W), emb (B, E) or None -> (B, C_out, H, W). ``emb_dim=0``: no embedding."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0,
                 scale_shift: bool = True, groups: int = 32, eps: float = 1e-5):
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = group_norm(in_ch, groups, eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch if scale_shift else out_ch) if emb_dim else None
        self.norm2 = group_norm(out_ch, groups, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb is None:
            h = self.norm2(h)
        elif self.scale_shift:
            e = self.emb(F.silu(emb))[:, :, None, None]
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + self.emb(F.silu(emb))[:, :, None, None])
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Strided 3x3 conv: (B, C, H, W) -> (B, C, H/2, W/2). Padding 1 on every side, or with
    ``asymmetric`` one row and column of zeros at the bottom and right only (the LDM / Stable
    Diffusion autoencoders' downsampling)."""

    def __init__(self, channels: int, asymmetric: bool = False):
        super().__init__()
        self.asymmetric = asymmetric
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0 if asymmetric else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.asymmetric else x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def maybe_checkpoint(enabled: bool, layer: nn.Module, *args):
    """``layer(*args)``; with ``enabled`` (and autograd on) its activations are recomputed in the
    backward pass instead of kept (non-reentrant ``torch.utils.checkpoint``, RNG state replayed)."""
    if enabled and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
    return layer(*args)


def set_grad_checkpointing(net: nn.Module, enabled: bool = True) -> int:
    """Switch gradient checkpointing of every block container in ``net`` (U-Net stages, DiT and MMDiT
    backbones; any module whose class has a ``grad_checkpointing`` attribute) on or off. Returns how
    many containers were switched (0: ``net`` has none, e.g. an MLP). The weights are untouched."""
    switched = 0
    for module in net.modules():
        if hasattr(type(module), "grad_checkpointing"):
            module.grad_checkpointing = enabled
            switched += 1
    return switched


class EmbedSequential(nn.ModuleList):
    """Applies its modules in order, passing the embedding to the ResBlocks and the text tokens
    (B, L, D) with their mask (B, L) to the cross-attention layers. With ``grad_checkpointing`` each
    ResBlock and attention layer is checkpointed on its own (resampling convs are not)."""

    grad_checkpointing = False  # set by set_grad_checkpointing

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = maybe_checkpoint(self.grad_checkpointing, layer, x, emb)
            elif isinstance(layer, (CrossAttention2d, SpatialTransformer)):
                x = maybe_checkpoint(self.grad_checkpointing, layer, x, context, mask)
            elif isinstance(layer, SelfAttention2d):
                x = maybe_checkpoint(self.grad_checkpointing, layer, x)
            else:
                x = layer(x)
        return x


def attention_layers(channels: int, context_dim: int, num_heads: int | None, head_dim: int | None,
                     groups: int, transformer: bool = False, *, eps: float = 1e-5, transformer_eps: float = 1e-5,
                     linear_projection: bool = False) -> list[nn.Module]:
    """Self-attention, then cross-attention on text tokens when ``context_dim`` > 0; or with
    ``transformer`` one transformer layer doing both and a feed-forward (Stable Diffusion's).
    ``eps``: the attention layers' GroupNorm eps; ``transformer_eps`` and ``linear_projection``: the
    transformer layer's (nn.attention.SpatialTransformer's ``eps`` and ``linear``)."""
    if transformer:
        return [SpatialTransformer(channels, context_dim, num_heads, head_dim, groups, transformer_eps,
                                   linear_projection)]
    layers: list[nn.Module] = [SelfAttention2d(channels, num_heads, head_dim, groups, eps)]
    if context_dim:
        layers.append(CrossAttention2d(channels, context_dim, num_heads, head_dim, groups, eps))
    return layers


def res_stage(in_ch: int, out_ch: int, emb_dim: int, attention: bool, *, dropout: float, scale_shift: bool,
              groups: int, num_heads: int | None, head_dim: int | None, context_dim: int = 0,
              transformer: bool = False, eps: float = 1e-5, transformer_eps: float = 1e-5,
              linear_projection: bool = False) -> EmbedSequential:
    """One ResBlock, followed by self- (and cross-) attention when ``attention`` (``eps``: every GroupNorm's
    but the transformer layers', which take ``transformer_eps``)."""
    layers: list[nn.Module] = [ResBlock(in_ch, out_ch, emb_dim, dropout, scale_shift, groups, eps)]
    if attention:
        layers += attention_layers(out_ch, context_dim, num_heads, head_dim, groups, transformer, eps=eps,
                                   transformer_eps=transformer_eps, linear_projection=linear_projection)
    return EmbedSequential(layers)
