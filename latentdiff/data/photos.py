"""``photos``: random crops of the photographs shipped inside scikit-image, the real-photo
super-resolution set (DESIGN.md section 4; DALL·E 2 trains its upsamplers on random crops).

The photographs are split by photo, fixed here: the test split's photos never appear in training.
Grey photographs are repeated to three channels. Crop i of a split is a pure function of
(seed, split, i): a photo drawn uniformly, rescaled by one of five factors from 1 to 1/4 (antialiased,
so that crops hold structure of several scales, not only fine texture), then a random
``image_size`` square cut from it.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from latentdiff.data.fashion_mnist import uint8_to_unit_range
from latentdiff.data.resized import resample_uint8

PHOTOS = {
    "train": ("astronaut", "rocket", "retina", "hubble_deep_field", "immunohistochemistry", "camera", "moon",
              "grass", "brick", "clock", "page", "text"),
    "test": ("chelsea", "coffee", "coins", "gravel"),
}
VERSION = 1  # bump when the crops change, so cached features are not reused


def load_photo(name: str) -> torch.Tensor:
    """One scikit-image photograph as (3, H, W) uint8 (grey repeated to RGB)."""
    import skimage.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1)


SCALES = (1.0, 0.71, 0.5, 0.35, 0.25)  # each photo is rescaled to these once; crops are cut from them


class PhotoCrops:
    """``n`` random ``image_size`` crops of the ``split`` photographs, with the dict interface of
    latentdiff's datasets: ``get_batch(index)`` -> {"x": (B, 3, S, S) in [-1, 1], "label": zeros}."""

    num_classes = 0
    channels = 3

    def __init__(self, n: int = 20_000, image_size: int = 64, split: str = "train", seed: int = 0):
        if split not in PHOTOS:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.image_size, self.split = image_size, split
        self.cache_key = f"photos-v{VERSION}-seed{seed}-n{n}"
        pyramid = [_rescaled(load_photo(name), image_size) for name in PHOTOS[split]]
        crops = []
        for i in range(n):
            rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
            levels = pyramid[int(rng.integers(len(pyramid)))]
            image = levels[int(rng.integers(len(levels)))]
            h, w = image.shape[1:]
            y, x = int(rng.integers(0, h - image_size + 1)), int(rng.integers(0, w - image_size + 1))
            crops.append(image[:, y:y + image_size, x:x + image_size])
        self.images = torch.stack(crops).contiguous()

    def __len__(self) -> int:
        return len(self.images)

    def get_batch(self, index: torch.Tensor) -> dict:
        index = torch.as_tensor(index, dtype=torch.long)
        return {"x": uint8_to_unit_range(self.images[index]), "label": torch.zeros(len(index), dtype=torch.long)}

    def __getitem__(self, i: int) -> dict:
        batch = self.get_batch(torch.tensor([i]))
        return {k: v[0] for k, v in batch.items()}


def _rescaled(photo: torch.Tensor, min_side: int) -> list[torch.Tensor]:
    """The photo (3, H, W) uint8 at each of ``SCALES`` whose shorter side stays >= min_side."""
    levels = []
    for scale in SCALES:
        h, w = round(photo.shape[1] * scale), round(photo.shape[2] * scale)
        if min(h, w) < min_side:
            break
        levels.append(resample_uint8(photo[None], (h, w))[0])
    return levels
