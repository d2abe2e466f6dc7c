"""An image captioner trained here (DALL·E 3, Betker et al. 2023, section 2: "an image captioner ...
trained with a CLIP image embedding and a language model"; here a small encoder-decoder).

* **vocabulary**: the words of the training captions, plus ``<pad>``, ``<eos>`` and one *style
  token* per caption style (``<short>``, ``<descriptive>``) that starts every sequence, so one model
  writes either style (section 2.1's "short synthetic captions" and "descriptive synthetic
  captions").
* **image encoder**: the CLIP-style model's ResNet tower (``clip.model.ImageTower``) read before its
  pool: the last feature map as s x s tokens, projected to ``dim``, plus learned positions (the
  captions name positions).
* **text decoder**: ``layers`` pre-LayerNorm transformer layers (``nn.attention.TransformerBlock``)
  with causal self-attention over the caption so far and cross-attention to the image tokens, then
  a linear map to the vocabulary. Teacher forcing: given [style, w_1, ..., w_n] it predicts
  [w_1, ..., w_n, <eos>] (``captioning.loss``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from latentdiff.clip.model import CLIPConfig, ImageTower
from latentdiff.config import Config
from latentdiff.nn.attention import TransformerBlock

PAD, EOS = "<pad>", "<eos>"
STYLES = ("short", "descriptive")
FIRST_WORD = 2 + len(STYLES)  # token ids: <pad> 0, <eos> 1, the style tokens, then the words


@dataclasses.dataclass(frozen=True)
class CaptionerConfig(Config):
    """The captioner's image tower, decoder and vocabulary (``vocab``: the words, filled in from the
    training captions at training time; ``tokens`` lists the full table)."""

    in_channels: int = 3          # image channels C
    image_size: int = 32          # image side S
    width: int = 32               # image tower: channels of the first stage
    stage_mult: tuple[int, ...] = (1, 2, 4)  # image tower: width multiplier per stage
    stem_stride: int = 1          # image tower: stride of the stem (1 keeps an 8x8 map at 32 px)
    norm_groups: int = 8          # image tower: GroupNorm groups
    dim: int = 128                # decoder width
    layers: int = 3               # decoder layers
    heads: int = 4                # decoder attention heads
    max_length: int = 16          # longest sequence: style token + words + <eos>
    concepts: bool = False        # word detectors on the pooled image features, read by the decoder as a token
    concept_prior: float = 0.0    # beta: beta * log sigmoid(detector logit) added to every word's logit
    vocab: tuple[str, ...] = ()   # the words (no special tokens), filled in at training time

    def __post_init__(self):
        if self.concept_prior and not self.concepts:
            raise ValueError("captioner.concept_prior needs captioner.concepts (the word detectors)")
        if self.dim % self.heads:
            raise ValueError(f"captioner.heads={self.heads} must divide captioner.dim={self.dim}")
        if self.max_length < 3:
            raise ValueError(f"captioner.max_length must be at least 3, got {self.max_length}")
        if len(set(self.vocab)) != len(self.vocab) or any(w.startswith("<") for w in self.vocab):
            raise ValueError("captioner.vocab must be distinct words without special tokens")
        self.image_tower()  # validates the tower's sizes

    def image_tower(self) -> CLIPConfig:
        """The image tower's sizes, in the CLIP config that ``ImageTower`` reads."""
        return CLIPConfig(in_channels=self.in_channels, image_size=self.image_size, width=self.width,
                          stage_mult=self.stage_mult, stem_stride=self.stem_stride, norm_groups=self.norm_groups,
                          embed_dim=self.dim)

    @property
    def tokens(self) -> tuple[str, ...]:
        """The token table: <pad> (id 0), <eos> (1), the style tokens, then the words."""
        return (PAD, EOS, *(f"<{s}>" for s in STYLES), *self.vocab)


class TextDecoder(nn.Module):
    """The caption decoder: ``decode(context (B, N, dim), tokens (B, T) int64, context_mask (B, N) | None)
    -> logits (B, T, V)``: causal self-attention over the tokens so far, cross-attention to the
    context, the next-token logits after each prefix. The captioner and the prompt upsampler are
    this decoder with an encoder of their own (``encode``)."""

    def __init__(self, cfg: CaptionerConfig):
        super().__init__()
        if not cfg.vocab:
            raise ValueError("the vocabulary is empty (captioner.vocab is filled in at training time)")
        self.cfg = cfg
        self.embed = nn.Embedding(len(cfg.tokens), cfg.dim)
        self.pos = nn.Parameter(torch.randn(cfg.max_length, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(cfg.dim, cfg.dim, cfg.heads) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, len(cfg.tokens))

    def decode(self, context: torch.Tensor, tokens: torch.Tensor,
               context_mask: torch.Tensor | None = None) -> torch.Tensor:
        T = tokens.shape[1]
        h = self.embed(tokens) + self.pos[:T]
        causal = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril().expand(len(tokens), T, T)
        for block in self.blocks:
            h = block(h, context, context_mask, self_mask=causal)
        return self.head(self.norm(h))

    def forward(self, inputs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The next-token logits (B, T, V) after each prefix of ``tokens`` given the encoded ``inputs``."""
        return self.decode(self.encode(inputs), tokens)


class Captioner(TextDecoder):
    """``forward(images (B, C, S, S), tokens (B, T) int64) -> logits (B, T, V)``: the next-token
    logits after each prefix of ``tokens`` (a style token first), conditioned on the images."""

    def __init__(self, cfg: CaptionerConfig):
        super().__init__(cfg)
        tower = cfg.image_tower()
        self.image_tower = ImageTower(tower)
        self.image_proj = nn.Linear(tower.width * tower.stage_mult[-1], cfg.dim)
        self.image_pos = nn.Parameter(torch.randn(tower.feature_size ** 2, cfg.dim) * 0.02)
        if cfg.concepts:
            self.concept_head = nn.Linear(tower.width * tower.stage_mult[-1], len(cfg.tokens))
            self.concept_proj = nn.Linear(len(cfg.tokens), cfg.dim)

    def encode(self, images: torch.Tensor):
        """Images (B, C, S, S) in [-1, 1] -> image tokens (B, s*s (+1 with concepts), dim), or with
        ``cfg.concept_prior`` (tokens, detector logits (B, V)) for ``decode``."""
        return self.encode_with_concepts(images)[0]

    def decode(self, context, tokens: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's logits, plus beta log sigmoid(detector logits) on the words when ``context`` is
        (tokens, detector logits): the detectors, linear on pooled features, are a word prior that a
        colour never seen with a shape does not bend (shallow fusion, as Fang et al. 2015 rescored
        captions with their word detectors)."""
        if not isinstance(context, tuple):
            return super().decode(context, tokens, context_mask)
        context, detected = context
        words = torch.arange(len(self.cfg.tokens), device=tokens.device) >= FIRST_WORD
        prior = F.logsigmoid(detected.float()) * words
        return super().decode(context, tokens, context_mask) + self.cfg.concept_prior * prior[:, None, :]

    def encode_with_concepts(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (``encode``'s context for ``decode``, concept logits (B, V) or None): with ``cfg.concepts``,
        linear word detectors on the mean-pooled tower features (Fang et al. 2015, "From captions to visual concepts and
        back"), their probabilities projected to one more token (the decoder attends to detected
        words, You et al. 2016); trained by ``captioning.text.CaptionLoss`` against the caption's words."""
        features = self.image_tower.features(images)
        tokens = self.image_proj(features) + self.image_pos
        if not self.cfg.concepts:
            return tokens, None
        logits = self.concept_head(features.mean(1))
        tokens = torch.cat([tokens, self.concept_proj(logits.sigmoid())[:, None]], 1)
        return ((tokens, logits.detach()) if self.cfg.concept_prior else tokens), logits


class PromptUpsampler(TextDecoder):
    """DALL·E 3's prompt upsampling (Betker et al. 2023, section 3.5 and appendix C, done there by
    GPT-4) as the captioner's decoder conditioned on text instead of an image: a short prompt's
    token ids (B, T_s) (the same vocabulary, its style token first) are encoded by ``layers``
    bidirectional transformer layers (padding masked) and the decoder writes the descriptive
    caption. ``cfg``'s image-tower fields are not used."""

    def __init__(self, cfg: CaptionerConfig):
        super().__init__(cfg)
        self.source_embed = nn.Embedding(len(cfg.tokens), cfg.dim)
        self.source_pos = nn.Parameter(torch.randn(cfg.max_length, cfg.dim) * 0.02)
        self.source_blocks = nn.ModuleList(TransformerBlock(cfg.dim, 0, cfg.heads) for _ in range(cfg.layers))

    def encode(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Short prompts' token ids (B, T_s) -> (states (B, T_s, dim), valid (B, T_s): not padding)."""
        valid = source != 0
        h = self.source_embed(source) + self.source_pos[:source.shape[1]]
        mask = valid[:, None, :].expand(-1, source.shape[1], -1)
        for block in self.source_blocks:
            h = block(h, self_mask=mask)
        return h, valid

    def decode(self, context, tokens: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``context``: ``encode``'s (states, valid), or states with ``context_mask``."""
        if isinstance(context, tuple):
            context, context_mask = context
        return super().decode(context, tokens, context_mask)
