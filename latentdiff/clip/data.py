"""Captioned batches for contrastive training, and the class prompts of zero-shot classification."""

from __future__ import annotations

import torch

from latentdiff.conditioning.text_cache import TextConditioned
from latentdiff.data.fashion_mnist import CAPTION_TEMPLATES, CLASS_SYNONYMS, class_caption


class CaptionIds(TextConditioned):
    """A captioned dataset's batches with each caption's text condition and its id.

    ``get_batch(index (B,))`` -> the base batch plus {"text" (B, L, D), "text_mask" (B, L),
    "pooled" (B, D), "caption_id" (B,) int64}; equal captions have equal ids (their row in the
    text table), which makes them positives of each other in ``clip.loss.info_nce``.
    """

    def get_batch(self, index: torch.Tensor) -> dict:
        index = torch.as_tensor(index, dtype=torch.long)
        return {**super().get_batch(index), "caption_id": self.caption_ids[index]}


def fmnist_class_prompts() -> list[list[str]]:
    """For each Fashion-MNIST class, every (template, synonym) caption of it: 10 lists of 15 prompts.

    These are the captions Fashion-MNIST's training images carry (``class_captions``), so
    zero-shot accuracy asks whether the image embedding lands nearest its own class's captions;
    no classifier is trained (CLIP section 3.1.2; averaging the templates is CLIP's prompt
    ensembling, section 3.1.4)."""
    return [[class_caption(label, t, s) for t in range(len(CAPTION_TEMPLATES)) for s in range(len(synonyms))]
            for label, synonyms in enumerate(CLASS_SYNONYMS)]
