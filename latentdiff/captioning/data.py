"""DALL·E 3's data setting on ``shapes`` (Betker et al. 2023, section 2): only a small labelled share of
the training images may be used with its exact (descriptive) caption; every other image has only its
alt-text. The captioner trains on the labelled share alone."""

from __future__ import annotations

import torch

from latentdiff.captioning.model import STYLES, CaptionerConfig
from latentdiff.captioning.text import encode_captions
from latentdiff.data.shapes import short_caption_of


def labelled_indices(n: int, share: float, seed: int) -> torch.Tensor:
    """The sorted indices (k,) of the labelled share: the first k = round(share n) (at least 1) of a
    seeded permutation of the n training items."""
    if not 0 < share <= 1:
        raise ValueError(f"labelled_share must be in (0, 1], got {share}")
    k = max(1, round(share * n))
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values


def style_captions(dataset, index: torch.Tensor, style: str) -> list[str]:
    """The ``style`` captions of dataset items ``index``: descriptive = the exact caption, short = the
    main subject (``data.shapes.short_caption_of``)."""
    if style == "descriptive":
        return [dataset.captions[i] for i in index.tolist()]
    return [short_caption_of(dataset.attributes[i][0]) for i in index.tolist()]


class LabelledShare:
    """The labelled share of a captioned dataset as the captioner's training data.

    Only the items in ``indices`` exist here (``len`` is their count; ``captions`` are theirs):
    ``get_batch(index (B,))`` -> {"x" (B, C, S, S) of items indices[index], "tokens" (B, K, T): their
    captions in each of the K styles, as ids}; with ``images`` False (a prompt upsampler's data) "x"
    is the short captions' ids (B, T) instead.
    """

    def __init__(self, base, indices: torch.Tensor, cfg: CaptionerConfig, images: bool = True):
        self.base, self.indices, self.images = base, indices, images
        self.captions = [base.captions[i] for i in indices.tolist()]
        self.tokens = torch.stack([encode_captions(cfg, style_captions(base, indices, s), s) for s in STYLES], 1)
        self.num_classes = 0

    def __len__(self) -> int:
        return len(self.indices)

    def get_batch(self, index: torch.Tensor) -> dict:
        index = torch.as_tensor(index, dtype=torch.long)
        if not self.images:
            return {"x": self.tokens[index, STYLES.index("short")], "tokens": self.tokens[index]}
        return {"x": self.base.get_batch(self.indices[index])["x"], "tokens": self.tokens[index]}
