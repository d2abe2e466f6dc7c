"""DALL·E 3's data setting on ``shapes`` (Betker et al. 2023, section 2): only a small labelled share of
the training images may be used with its exact (descriptive) caption; every other image has only its
alt-text. The captioner trains on the labelled share alone."""

from __future__ import annotations

import torch

from latentdiff.captioning.model import STYLES, CaptionerConfig
from latentdiff.captioning.text import encode_captions
from latentdiff.data.shapes import canonical, caption_of, mirrored, short_caption_of


def labelled_indices(n: int, share: float, seed: int) -> torch.Tensor:
    """The sorted indices (k,) of the labelled share: the first k = round(share n) (at least 1) of a
    seeded permutation of the n training items."""
    if not 0 < share <= 1:
        raise ValueError(f"labelled_share must be in (0, 1], got {share}")
    k = max(1, round(share * n))
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values


def style_captions(dataset, index: torch.Tensor, style: str, mirror: bool = False,
                   canonical_order: bool = False) -> list[str]:
    """The ``style`` captions of dataset items ``index``: descriptive = the exact caption, short = the
    main subject (``data.shapes.short_caption_of``); ``mirror``: of the scenes flipped left to right;
    ``canonical_order``: two objects stated left / upper one first (``data.shapes.canonical``)."""
    scenes = [dataset.attributes[i] for i in index.tolist()]
    if mirror:
        scenes = [mirrored(*scene) for scene in scenes]
    if canonical_order:
        scenes = [canonical(*scene) for scene in scenes]
    if style == "descriptive":
        return [caption_of(*scene) for scene in scenes]
    return [short_caption_of(scene[0]) for scene in scenes]


class LabelledShare:
    """The labelled share of a captioned dataset as the captioner's training data.

    Item j < len(indices) is labelled item indices[j] with its captions in the ``STYLES``;
    with ``mirror``, item len(indices) + j is the same image flipped left to right with the captions
    of the flipped scene. ``captions`` are the exact captions of the labelled items alone.
    ``get_batch(index (B,))`` -> {"x" (B, C, S, S), "tokens" (B, K, T): the items' captions in each
    of the K styles, as ids}; with ``images`` False (a prompt upsampler's data) "x" is the short
    captions' ids (B, T) instead. ``canonical_order``: see ``style_captions``.
    """

    def __init__(self, base, indices: torch.Tensor, cfg: CaptionerConfig, images: bool = True,
                 mirror: bool = False, canonical_order: bool = False):
        self.base, self.indices, self.images = base, indices, images
        self.captions = [base.captions[i] for i in indices.tolist()]
        def view(flip: bool) -> torch.Tensor:  # (k, K, T): every labelled item in each style
            return torch.stack([encode_captions(cfg, style_captions(base, indices, s, flip, canonical_order), s)
                                for s in STYLES], 1)

        self.tokens = torch.cat([view(flip) for flip in ((False, True) if mirror else (False,))])
        self.num_classes = 0

    def __len__(self) -> int:
        return len(self.tokens)

    def get_batch(self, index: torch.Tensor) -> dict:
        index = torch.as_tensor(index, dtype=torch.long)
        if not self.images:
            return {"x": self.tokens[index, STYLES.index("short")], "tokens": self.tokens[index]}
        flip = index >= len(self.indices)
        x = self.base.get_batch(self.indices[index % len(self.indices)])["x"]
        return {"x": torch.where(flip[:, None, None, None], x.flip(-1), x), "tokens": self.tokens[index]}
