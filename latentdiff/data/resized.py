"""Datasets read at one size and seen at a smaller one: the low-resolution view of a cascade.

A cascade's base model learns the distribution of its upsamplers' inputs: the full-size images
downsampled with an antialiasing filter (Imagen, Saharia et al. 2022; CDM, Ho et al. 2021), not
images drawn at the small size (those have hard, aliased edges that no downsampled image has).
``nn.superres.resample`` is the one resampling rule of latentdiff's super-resolution: bicubic with
antialiasing (PIL's filter), for going down and up.
"""

from __future__ import annotations

import torch
from latentdiff.data.fashion_mnist import uint8_to_unit_range
from latentdiff.nn.superres import resample


def resample_uint8(images: torch.Tensor, size: int | tuple[int, int], chunk: int = 2048) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, C, size, size) uint8 by :func:`resample`, rounded and clipped."""
    out = [resample(images[i:i + chunk].float(), size).round().clamp(0, 255).to(torch.uint8)
           for i in range(0, len(images), chunk)]
    return torch.cat(out)


class Downsampled:
    """``base`` (an in-memory dataset with ``images`` (N, C, S, S) uint8 and ``get_batch``) seen at
    ``image_size`` < S: the images are resized once (``resample_uint8``); captions, labels and other
    per-item fields are the base's."""

    def __init__(self, base, image_size: int):
        source = base.images.shape[-1]
        if image_size > source:
            raise ValueError(f"data.source_size={source} is smaller than data.image_size={image_size}")
        self.base, self.image_size, self.images = base, image_size, resample_uint8(base.images, image_size)
        self.num_classes, self.channels = base.num_classes, base.channels
        self.captions = getattr(base, "captions", None)
        key = getattr(base, "cache_key", None)
        self.cache_key = None if key is None else f"{key}-from{source}"

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name):  # attributes, alt_texts, class_names, ... of the base
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def get_batch(self, index: torch.Tensor) -> dict:
        index = torch.as_tensor(index, dtype=torch.long)
        return {**self.base.get_batch(index), "x": uint8_to_unit_range(self.images[index])}

    def __getitem__(self, i: int) -> dict:
        batch = self.get_batch(torch.tensor([i]))
        return {k: v[0] for k, v in batch.items()}
