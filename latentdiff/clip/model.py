"""A small CLIP-style joint embedding (Radford et al. 2021), trained here: DALL·E 2 (Ramesh et al.
2022) conditions its prior and decoder on such an embedding, and the CLIP score needs one.

Two towers map images and captions into one ``embed_dim``-d space, both L2-normalised, so that a
dot product is a cosine similarity (Radford et al. 2021, Figure 3's pseudo-code):

* **image tower**: a small ResNet. A conv stem (stride ``stem_stride``, as CLIP's ResNet stem also
  downsamples), residual stages of GroupNorm ResBlocks (``nn.blocks.ResBlock``, no time embedding)
  with a strided conv between stages, a final GroupNorm-SiLU and a pool: ``mean`` (global
  average) or ``attention`` (CLIP's ``AttentionPool2d``: the mean token, with learned positional
  embeddings, queries every position; on ``shapes``, whose captions name positions, it measured
  no better than the mean: see ``presets.clip.shapes_clip``), then a linear projection.
* **text tower**: the frozen MiniLM token states (B, L, 384) are not trained; a trainable head
  reads them: LayerNorm, a linear map to ``text_width``, one residual per-token MLP, then
  masked multi-head *attention pooling* with a learned query (Lee et al. 2019's pooling by
  attention; as ``AttentionPool2d`` with a learned query). A learned null token is always among
  the keys, so an empty caption (all-False mask) still gives a finite embedding. Then LayerNorm
  and a linear projection.
* **temperature**: a learned log logit scale, initialised to log(1 / 0.07) and clamped at
  ``max_logit_scale`` = log(100) where it is used (CLIP section 2.5; open_clip clamps the
  parameter itself after each step: clamping on use gives the same logits without a hook in the
  training loop).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from latentdiff.config import Config
from latentdiff.nn.attention import token_attention
from latentdiff.nn.blocks import Downsample, ResBlock
from latentdiff.nn.layers import group_norm

POOLS = ("mean", "attention")


@dataclasses.dataclass(frozen=True)
class CLIPConfig(Config):
    """The two towers of a CLIP-style model and its temperature."""

    in_channels: int = 1          # image channels C (1 grey, 3 RGB)
    image_size: int = 32          # image side S
    width: int = 32               # channels of the stem and the first stage
    stage_mult: tuple[int, ...] = (1, 2, 4)  # width multiplier per stage; each stage after the first halves the side
    blocks_per_stage: int = 1     # residual blocks per stage
    stem_stride: int = 2          # stride of the stem conv (1 or 2)
    norm_groups: int = 8          # GroupNorm groups of the image tower
    pool: str = "mean"            # image pooling: mean (global average) | attention (CLIP's AttentionPool2d)
    text_dim: int = 384           # width of the frozen text encoder's token states (MiniLM-L6: 384)
    text_width: int = 256         # width of the trainable text head
    heads: int = 4                # heads of the attention pools (text head; image tower with pool=attention)
    embed_dim: int = 128          # joint embedding dimension D
    init_logit_scale: float = math.log(1 / 0.07)  # initial log logit scale (CLIP: log(1 / 0.07))
    max_logit_scale: float = math.log(100.0)      # clamp of the log logit scale: exp(scale) <= 100

    def __post_init__(self):
        if self.in_channels not in (1, 3):
            raise ValueError(f"clip.in_channels must be 1 or 3, got {self.in_channels}")
        if self.pool not in POOLS:
            raise ValueError(f"clip.pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if self.stem_stride not in (1, 2):
            raise ValueError(f"clip.stem_stride must be 1 or 2, got {self.stem_stride}")
        if not self.stage_mult or min(self.stage_mult) < 1:
            raise ValueError(f"clip.stage_mult must be positive multipliers, got {list(self.stage_mult)}")
        if self.image_size % (self.stem_stride * 2 ** (len(self.stage_mult) - 1)):
            raise ValueError(f"clip.image_size {self.image_size} must be divisible by "
                             f"{self.stem_stride * 2 ** (len(self.stage_mult) - 1)} (stem stride and stages)")
        widths = [self.text_width] + ([self.width * self.stage_mult[-1]] if self.pool == "attention" else [])
        if any(w % self.heads for w in widths):
            raise ValueError(f"clip.heads={self.heads} must divide the pooled widths {widths}")
        if self.init_logit_scale > self.max_logit_scale:
            raise ValueError(f"clip.init_logit_scale {self.init_logit_scale} exceeds max_logit_scale "
                             f"{self.max_logit_scale}")

    @property
    def feature_size(self) -> int:
        """Side of the image tower's last feature map."""
        return self.image_size // (self.stem_stride * 2 ** (len(self.stage_mult) - 1))


class AttentionPool(nn.Module):
    """Multi-head attention of one query per item over its tokens: query (B, C), tokens (B, N, C),
    mask (B, N) bool (True: attend) or None -> (B, C)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.kv, self.out = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        k, v = self.kv(tokens).chunk(2, dim=-1)
        return self.out(token_attention(self.q(query)[:, None], k, v, self.heads, mask)[:, 0])


class ImageTower(nn.Module):
    """Images (B, C, S, S) in [-1, 1] -> unnormalised embeddings (B, D)."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.stem = nn.Conv2d(cfg.in_channels, cfg.width, 3, stride=cfg.stem_stride, padding=1)
        layers, ch = [], cfg.width
        for i, mult in enumerate(cfg.stage_mult):
            if i > 0:
                layers.append(Downsample(ch))
            for _ in range(cfg.blocks_per_stage):
                layers.append(ResBlock(ch, cfg.width * mult, 0, groups=cfg.norm_groups))
                ch = cfg.width * mult
        self.stages = nn.Sequential(*layers)
        self.norm = group_norm(ch, cfg.norm_groups)
        self.pool = None
        if cfg.pool == "attention":
            self.pool = AttentionPool(ch, cfg.heads)
            # one position per feature-map cell, plus one for the mean token (CLIP's AttentionPool2d)
            self.pos = nn.Parameter(torch.randn(cfg.feature_size ** 2 + 1, ch) / ch ** 0.5)
        self.proj = nn.Linear(ch, cfg.embed_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, S, S) -> the last feature map as tokens (B, s*s, C'), before pooling."""
        return F.silu(self.norm(self.stages(self.stem(x)))).flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.features(x)                           # (B, s*s, C')
        mean = tokens.mean(dim=1)                           # (B, C'): global average pool
        if self.pool is not None:
            tokens = torch.cat([mean[:, None], tokens], dim=1) + self.pos
            mean = self.pool(tokens[:, 0], tokens)
        return self.proj(mean)


class TextHead(nn.Module):
    """Frozen token states (B, L, text_dim) and their mask (B, L) bool -> unnormalised embeddings (B, D)."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        w = cfg.text_width
        self.norm_in = nn.LayerNorm(cfg.text_dim)
        self.proj_in = nn.Linear(cfg.text_dim, w)
        self.mlp = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, 2 * w), nn.GELU(), nn.Linear(2 * w, w))
        self.query = nn.Parameter(torch.randn(w) / w ** 0.5)
        self.null = nn.Parameter(torch.zeros(w))  # always attendable: an empty caption pools to it
        self.pool = AttentionPool(w, cfg.heads)
        self.norm_out = nn.LayerNorm(w)
        self.proj = nn.Linear(w, cfg.embed_dim)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        B = text.shape[0]
        h = self.proj_in(self.norm_in(text.float()))
        h = h + self.mlp(h)                                               # (B, L, W)
        tokens = torch.cat([self.null.expand(B, 1, -1), h], dim=1)        # (B, 1 + L, W)
        mask = torch.cat([text_mask.new_ones(B, 1), text_mask], dim=1).bool()
        pooled = self.pool(self.query.expand(B, -1), tokens, mask)        # (B, W)
        return self.proj(self.norm_out(pooled))


class CLIPModel(nn.Module):
    """The joint embedding: ``encode_image``, ``encode_text`` (unit-norm (B, D) each) and the
    clamped log logit scale; ``forward`` returns all three, what the contrastive loss needs."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.image_tower = ImageTower(cfg)
        self.text_head = TextHead(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, S, S) in [-1, 1] -> unit-norm embeddings (B, D)."""
        return F.normalize(self.image_tower(x), dim=-1)

    def encode_text(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Frozen token states (B, L, text_dim) with mask (B, L) bool -> unit-norm embeddings (B, D)."""
        return F.normalize(self.text_head(text, text_mask), dim=-1)

    def scale(self) -> torch.Tensor:
        """The log logit scale in use, a 0-d tensor: clamped so that exp(scale) <= exp(max_logit_scale)."""
        return self.logit_scale.clamp(max=self.cfg.max_logit_scale)

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor):
        """-> (image_emb (B, D), text_emb (B, D), log logit scale ()): the logits are
        ``exp(scale) * image_emb @ text_emb.T`` (``clip.loss.info_nce``)."""
        return self.encode_image(x), self.encode_text(text, text_mask), self.scale()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
