"""What the transformer denoisers share (DiT, Peebles & Xie 2023; MMDiT, Esser et al. 2024): their
sizes, the patch embedding with fixed 2D positions, the condition embedding, adaLN modulation,
per-head q/k RMS-norm and the final layer back to pixels.

A transformer backbone takes its *interface* from the run's ``model`` section (a ``UNetConfig``:
``image_size``, ``in_channels``, ``out_channels``, ``num_classes``, ``context_dim``, ``pooled_dim``;
the U-Net's own sizes are unused) and its sizes from a :class:`TransformerConfig`, as a ControlNet
takes its base U-Net's. ``net.cfg`` is the interface, so every sampler, guidance wrapper and pipeline
reads a transformer as it reads a U-Net.

adaLN (DiT section 3.2): the condition c (time + class + pooled text, (B, cond_dim)) is mapped by
SiLU -> Linear to per-channel shifts, scales and gates; a normalised stream is modulated as
LayerNorm(x) (1 + scale) + shift and every residual branch is multiplied by its gate. The Linear
starts at zero ("adaLN-Zero"), so at initialisation every block is the identity.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from latentdiff.config import Config
from latentdiff.nn.layers import TimestepMLP, sincos_2d

KINDS = ("dit", "mmdit")


@dataclasses.dataclass(frozen=True)
class TransformerConfig(Config):
    """A transformer denoiser's sizes; its interface (image size, channels, conditions) is the run's
    ``model`` section."""

    kind: str = "dit"             # dit (Peebles & Xie 2023) | mmdit (Esser et al. 2024)
    patch_size: int = 2           # p: the image is cut into p x p patches, one token each
    dim: int = 256                # token width
    depth: int = 6                # blocks
    heads: int = 4                # attention heads
    mlp_ratio: float = 4.0        # MLP hidden width / dim
    qk_norm: bool = False         # RMS-norm of every head's q and k (SD3.5; Esser et al. 2024, section 5.3.2)
    cross_attention: bool = True  # dit with text: cross-attention to the text tokens after each self-attention
    freq_shift: float = 0.0       # time embedding's frequency shift (diffusers' DiT: 1; ``timestep_embedding``)
    ff_norm_eps: float = 1e-6     # eps of the LayerNorm before each MLP (diffusers' DiT: 1e-5)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"transformer.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("patch_size", "dim", "depth", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"transformer.{name} must be at least 1, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ValueError(f"transformer.heads={self.heads} must divide transformer.dim={self.dim}")
        if self.dim % 4:
            raise ValueError(f"transformer.dim must be divisible by 4 (2D sine-cosine positions), got {self.dim}")

    def check_interface(self, model) -> None:
        """Refuse a ``model`` interface this transformer cannot serve, naming the fields."""
        if model.image_size % self.patch_size:
            raise ValueError(f"model.image_size {model.image_size} must be divisible by transformer.patch_size "
                             f"{self.patch_size}")
        if model.low_res_channels or model.image_embed_dim:
            raise ValueError("a transformer backbone takes no model.low_res_channels or model.image_embed_dim "
                             "(super-resolution and unCLIP decoders are U-Nets)")
        if self.kind == "mmdit" and not model.context_dim:
            raise ValueError("transformer.kind=mmdit needs text tokens (model.context_dim > 0): its joint attention "
                             "runs over image and text; use dit without text")


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (B, N, C) * (1 + scale (B, C)) + shift (B, C), per sample."""
    return x * (1 + scale[:, None]) + shift[:, None]


def plain_norm(dim: int, eps: float = 1e-6) -> nn.LayerNorm:
    """LayerNorm without its own affine parameters (adaLN supplies them)."""
    return nn.LayerNorm(dim, elementwise_affine=False, eps=eps)


class AdaLN(nn.Module):
    """c (B, cond_dim) -> n modulation vectors (B, dim) each, from SiLU -> Linear started at zero."""

    def __init__(self, dim: int, cond_dim: int, n: int):
        super().__init__()
        self.n = n
        self.linear = nn.Linear(cond_dim, n * dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(nn.functional.silu(c)).chunk(self.n, dim=1)


class HeadNorm(nn.Module):
    """RMS-norm over each head's channels of q or k (B, N, heads * d): x / sqrt(mean(x^2) + eps) * w,
    a learned scale w per channel of d (Zhang & Sennrich 2019). Written out in float32, as diffusers'
    RMSNorm computes it, so that bf16 runs agree too (torch's fused kernel also showed as 17% of a
    DiT step under the profiler, though wall-clock step times did not differ measurably)."""

    def __init__(self, dim: int, heads: int, eps: float = 1e-6):
        super().__init__()
        self.heads = heads
        self.norm = nn.RMSNorm(dim // heads, eps=eps)  # holds w and eps (its kernel is not called)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unflatten(-1, (self.heads, -1)).float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.norm.eps) * self.norm.weight.float()
        return h.flatten(-2).to(x.dtype)


class PatchEmbed(nn.Module):
    """Images (B, C, H, W) -> tokens (B, H W / p^2, dim): a p x p stride-p convolution, plus fixed 2D
    sine-cosine positions (``pos``, a buffer saved with the weights, so a converted checkpoint's own
    positions load)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, grid: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.register_buffer("pos", sincos_2d(dim, grid, grid)[None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2) + self.pos.to(x.dtype)


def unpatchify(h: torch.Tensor, p: int, channels: int, grid: int) -> torch.Tensor:
    """Tokens (B, grid^2, p p C), row-major, each p x p x C -> images (B, C, grid p, grid p)."""
    B = h.shape[0]
    h = h.reshape(B, grid, grid, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return h.reshape(B, channels, grid * p, grid * p)


class ConditionEmbedding(nn.Module):
    """The global condition c (B, dim) = MLP(sinusoid(t)) + class embedding (a null class at index
    num_classes) + MLP(pooled text): DiT's time + class embedding, SD3's time + pooled-text one."""

    def __init__(self, dim: int, num_classes: int = 0, pooled_dim: int = 0, freq_shift: float = 0.0):
        super().__init__()
        self.time = TimestepMLP(256, dim, freq_shift)
        self.classes = nn.Embedding(num_classes + 1, dim) if num_classes else None
        self.pooled = nn.Sequential(nn.Linear(pooled_dim, dim), nn.SiLU(), nn.Linear(dim, dim)) if pooled_dim else None

    def forward(self, t: torch.Tensor, class_labels: torch.Tensor | None = None,
                pooled: torch.Tensor | None = None) -> torch.Tensor:
        c = self.time(t)
        if self.classes is not None:
            if class_labels is None:  # unconditional: the null class
                class_labels = torch.full((len(t),), self.classes.num_embeddings - 1, device=t.device)
            c = c + self.classes(class_labels)
        if self.pooled is not None and pooled is not None:
            c = c + self.pooled(pooled.to(c.dtype))
        return c


class FinalLayer(nn.Module):
    """Tokens (B, N, dim) -> (B, N, out): adaLN-modulated LayerNorm (shift, scale), then a Linear started
    at zero (DiT: the network predicts zero at initialisation)."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.norm = plain_norm(dim)
        self.ada = AdaLN(dim, dim, 2)
        self.linear = nn.Linear(dim, out)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c)
        return self.linear(modulate(self.norm(x), shift, scale))


class TransformerBackbone(nn.Module):
    """What DiT and MMDiT share: ``model`` (a ``UNetConfig``) is the interface and ``cfg`` the sizes
    (``net.cfg`` is the interface: what samplers and guidance read); the patch embedding, the
    condition embedding and the final layer back to (B, C_out, S, S) (``to_image``). With
    ``grad_checkpointing`` (``nn.blocks.set_grad_checkpointing``) each block is checkpointed."""

    grad_checkpointing = False

    def __init__(self, model, cfg: TransformerConfig, learned_variance: bool = False):
        super().__init__()
        cfg.check_interface(model)
        self.cfg, self.transformer_cfg = model, cfg
        self.grid = model.image_size // cfg.patch_size
        c = model.out_channels or model.in_channels
        self.out_channels = 2 * c if learned_variance else c
        self.patch = PatchEmbed(model.in_channels, cfg.dim, cfg.patch_size, self.grid)
        self.embed = ConditionEmbedding(cfg.dim, model.num_classes, model.pooled_dim, cfg.freq_shift)

    def add_final_layer(self) -> None:
        """The final layer, registered last (after the subclass's blocks: the parameter order that
        optimizer states saved by a run follow)."""
        self.final = FinalLayer(self.transformer_cfg.dim, self.transformer_cfg.patch_size ** 2 * self.out_channels)

    def to_image(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, dim) and condition (B, dim) -> (B, C_out, S, S)."""
        return unpatchify(self.final(h, c), self.transformer_cfg.patch_size, self.out_channels, self.grid)
