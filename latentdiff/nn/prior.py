"""DALL·E 2's diffusion prior (Ramesh et al. 2022, section 2.2): a decoder-only (causal) transformer
that denoises a CLIP image embedding given a caption.

The sequence, in order (Ramesh et al. 2022, section 2.2; one token per item but the caption's):

    [bos, caption tokens (L), CLIP text embedding, diffusion time, noised image embedding, query]

Every token is projected to ``width``, a learned position embedding is added, and ``layers``
pre-LayerNorm transformer layers (``nn.attention.TransformerBlock``, no cross-attention) run under a
causal mask that also hides padded caption tokens. The output at the final (query) token is the
prediction: the paper predicts the unnoised embedding directly (``parameterisation = "x0"`` in the
run's DiffusionConfig), so ``Denoiser`` turns it into x0_hat with c_skip = 0, c_out = 1.

Scale: CLIP embeddings are unit vectors, about 1/sqrt(D) per coordinate, which forward diffusion's
unit noise would drown long before t = T; the prior works on ``sqrt(D)`` times the embedding, whose
coordinates have unit variance (DALLE2-pytorch's ``image_embed_scale``, after K. Crowson), and the
text embedding is read at the same scale. ``unclip.prior`` scales in and out.

A missing caption (``text`` None, or every ``text_mask`` entry False, with zero ``pooled``: the
dropped condition of classifier-free guidance) is the same input either way: the caption tokens are
masked out and the text embedding is zero.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from latentdiff.config import Config
from latentdiff.nn.attention import TransformerBlock
from latentdiff.nn.layers import TimestepMLP

EXTRA_TOKENS = 5  # bos, text embedding, time, noised image embedding, query


@dataclasses.dataclass(frozen=True)
class PriorConfig(Config):
    """The prior transformer's sizes; ``embed_dim`` is the CLIP model's, ``text_dim`` and
    ``max_length`` the frozen text encoder's."""

    embed_dim: int = 128          # CLIP embedding width D (the denoised vector)
    text_dim: int = 384           # width of the frozen caption token states (MiniLM-L6: 384)
    max_length: int = 16          # caption tokens L (the text encoder's max_length)
    width: int = 256              # transformer width
    layers: int = 4               # transformer layers
    heads: int = 4                # attention heads

    def __post_init__(self):
        for name in ("embed_dim", "text_dim", "max_length", "width", "layers", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"prior.{name} must be at least 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"prior.heads={self.heads} must divide prior.width={self.width}")


def causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """valid (B, N) bool -> (B, N, N) bool: query i attends to key j when j <= i and j is valid."""
    N = valid.shape[1]
    causal = torch.ones(N, N, dtype=torch.bool, device=valid.device).tril()
    return causal[None] & valid[:, None, :]


class PriorTransformer(nn.Module):
    """``forward(x_t (B, D), t (B,) float, text (B, L, text_dim) | None, text_mask (B, L) bool | None,
    pooled (B, D) | None) -> (B, D)``: the denoiser contract of ``precond.Denoiser`` on vectors.
    ``pooled`` is the caption's CLIP text embedding (unit norm); ``x_t`` and the output are in the
    scaled space (``sqrt(D)`` x the unit embedding, see the module docstring)."""

    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.sample_shape = (cfg.embed_dim,)  # what ``generate`` draws noise of
        self.bos = nn.Parameter(torch.randn(w) / w ** 0.5)
        self.query = nn.Parameter(torch.randn(w) / w ** 0.5)
        self.text_in = nn.Sequential(nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, w))
        self.text_embed_in = nn.Linear(cfg.embed_dim, w)
        self.time_embed = TimestepMLP(w, w)
        self.x_in = nn.Linear(cfg.embed_dim, w)
        self.position = nn.Parameter(torch.randn(cfg.max_length + EXTRA_TOKENS, w) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(w, 0, cfg.heads) for _ in range(cfg.layers))
        self.norm_out = nn.LayerNorm(w)
        self.out = nn.Linear(w, cfg.embed_dim)

    def sequence(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor | None,
                 text_mask: torch.Tensor | None, pooled: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The input tokens (B, L + 5, W) with positions added, and which of them are valid (B, L + 5) bool."""
        B, cfg = x_t.shape[0], self.cfg
        if text is None:  # no caption: L masked-out tokens, the same input as a dropped caption
            text = x_t.new_zeros(B, cfg.max_length, cfg.text_dim)
            text_mask = torch.zeros(B, cfg.max_length, dtype=torch.bool, device=x_t.device)
        if text.shape[1] != cfg.max_length:
            raise ValueError(f"the prior reads {cfg.max_length} caption tokens, got {text.shape[1]}")
        text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=x_t.device) if text_mask is None else text_mask
        pooled = x_t.new_zeros(B, cfg.embed_dim) if pooled is None else pooled
        if t.ndim == 0:
            t = t.expand(B)
        w = self.cfg.width
        tokens = torch.cat([self.bos.expand(B, 1, w), self.text_in(text.to(x_t.dtype)),
                            self.text_embed_in(pooled.to(x_t.dtype) * cfg.embed_dim ** 0.5)[:, None],
                            self.time_embed(t)[:, None], self.x_in(x_t)[:, None], self.query.expand(B, 1, w)], 1)
        keep = torch.ones(B, 1, dtype=torch.bool, device=x_t.device)
        valid = torch.cat([keep, text_mask.bool(), keep.expand(B, EXTRA_TOKENS - 1)], 1)
        return tokens + self.position[:tokens.shape[1]], valid

    def transformer(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Causal transformer over tokens (B, N, W) with valid (B, N) -> hidden states (B, N, W)."""
        mask = causal_mask(valid)
        for block in self.blocks:
            tokens = block(tokens, self_mask=mask)
        return self.norm_out(tokens)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None, pooled: torch.Tensor | None = None) -> torch.Tensor:
        tokens, valid = self.sequence(x_t, t, text, text_mask, pooled)
        return self.out(self.transformer(tokens, valid)[:, -1])
