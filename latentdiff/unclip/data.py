"""The batches unCLIP trains on: a decoder's images with their CLIP image embeddings, and a prior's
(caption, image embedding) pairs (Ramesh et al. 2022, sections 2.1 and 2.2)."""

from __future__ import annotations

import torch

from latentdiff.conditioning.text_cache import TextTable


class ImageEmbedded:
    """A dataset (``get_batch``) whose items carry their CLIP image embedding: the decoder's data.

    ``get_batch(index (B,))`` -> the base batch plus {"image_embed" (B, D)} (unit vectors)."""

    def __init__(self, base, image_embeds: torch.Tensor):
        if len(image_embeds) != len(base):
            raise ValueError(f"{len(image_embeds)} image embeddings for a dataset of {len(base)} items")
        self.base, self.image_embeds = base, image_embeds
        self.num_classes = getattr(base, "num_classes", 0)
        self.table = getattr(base, "table", None)

    def __len__(self) -> int:
        return len(self.base)

    def get_batch(self, index: torch.Tensor) -> dict:
        index = torch.as_tensor(index, dtype=torch.long)
        return {**self.base.get_batch(index), "image_embed": self.image_embeds[index]}


class PriorPairs:
    """(caption, image embedding) pairs for the diffusion prior, in the shape ``DiffusionLoss`` reads.

    ``get_batch(index (B,))`` -> {"x" (B, D): sqrt(D) x the image's unit CLIP embedding (the
    prior's data, ``nn.prior``), "text" (B, L, text_dim), "text_mask" (B, L): the caption's frozen
    token states, "pooled" (B, D): its unit CLIP text embedding}. ``DiffusionLoss`` drops the
    three text entries together (classifier-free guidance, the paper's 10%)."""

    def __init__(self, image_embeds: torch.Tensor, captions: list[str], table: TextTable, text_embeds: torch.Tensor):
        if len(image_embeds) != len(captions):
            raise ValueError(f"{len(image_embeds)} image embeddings for {len(captions)} captions")
        self.image_embeds, self.table, self.text_embeds = image_embeds, table, text_embeds
        self.caption_ids = table.ids(captions)
        self.scale = image_embeds.shape[1] ** 0.5
        self.num_classes = 0

    def __len__(self) -> int:
        return len(self.image_embeds)

    def get_batch(self, index: torch.Tensor) -> dict:
        index = torch.as_tensor(index, dtype=torch.long)
        ids = self.caption_ids[index]
        rows = self.table.rows(ids)
        return {"x": self.image_embeds[index] * self.scale, "text": rows["text"], "text_mask": rows["text_mask"],
                "pooled": self.text_embeds[ids]}
