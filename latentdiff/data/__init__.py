"""Datasets: Fashion-MNIST, image folders and the procedural ``shapes``, with one dict interface.

Every dataset here keeps decoded uint8 images in memory and exposes

* ``__getitem__(i) -> {"x": (C, S, S) float in [-1, 1], "label": () int64, ...}``
* ``get_batch(index (B,)) -> {"x": (B, C, S, S), "label": (B,), ...}``
* attributes ``num_classes``, ``channels``, ``image_size``;
* ``captions`` (one string per item) where the dataset is captioned (``shapes``, ``fmnist``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch.utils.data import Dataset

from ..config import Config
from .fashion_mnist import CLASS_NAMES, FashionMNIST, class_caption, read_idx
from .image_folder import ImageFolder
from .shapes import ShapesDataset, held_out_prompts

DATASET_NAMES = ("fmnist", "folder", "shapes")
SHAPES_DEFAULT_SIZE = {"train": 50_000, "test": 5_000}


@dataclasses.dataclass(frozen=True)
class DataConfig(Config):
    """Which dataset to load.

    Attributes:
        name: ``"fmnist"``, ``"folder"`` or ``"shapes"``.
        root: data folder; None means the default (Fashion-MNIST only).
        image_size: side S of the images.
        channels: 1 (grey) or 3 (RGB); Fashion-MNIST is always 1, ``shapes`` always 3.
        n: ``shapes`` only: images per split (None: 50,000 train, 5,000 test).
        seed: ``shapes`` only: the generator's seed.
    """

    name: str = "fmnist"
    root: str | None = None
    image_size: int = 32
    channels: int = 1
    n: int | None = None
    seed: int = 0


def build_dataset(cfg: DataConfig, split: str = "train") -> Dataset:
    """Build the dataset named by ``cfg`` for ``split`` ("train" or "test").

    A ``"folder"`` dataset uses ``root/<split>`` when ``root`` has both
    ``train`` and ``test`` subfolders, else the whole of ``root`` for any split.
    """
    if cfg.name == "fmnist":
        if cfg.channels != 1:
            raise ValueError(f"Fashion-MNIST has 1 channel, DataConfig.channels={cfg.channels}")
        return FashionMNIST(root=cfg.root, split=split, image_size=cfg.image_size)
    if cfg.name == "folder":
        if cfg.root is None:
            raise ValueError("DataConfig(name='folder') needs root= a folder of images")
        root = Path(cfg.root).expanduser()
        if (root / "train").is_dir() and (root / "test").is_dir():
            root = root / split
        return ImageFolder(str(root), image_size=cfg.image_size, channels=cfg.channels)
    if cfg.name == "shapes":
        if cfg.channels != 3:
            raise ValueError(f"shapes images have 3 channels, DataConfig.channels={cfg.channels}")
        n = cfg.n if cfg.n is not None else SHAPES_DEFAULT_SIZE.get(split, 5_000)
        return ShapesDataset(n=n, image_size=cfg.image_size, split=split, seed=cfg.seed)
    raise ValueError(f"unknown dataset name {cfg.name!r}; valid names: {list(DATASET_NAMES)}")


def grid_prompts(cfg: DataConfig, k: int = 10) -> list[str]:
    """k prompts to show while training a text-to-image model: ``shapes``: held-out prompts (half
    one object, half two); ``fmnist``: one caption per class; else the test split's first captions."""
    if cfg.name == "shapes":
        return held_out_prompts(n=k)
    if cfg.name == "fmnist":
        return [class_caption(y % 10) for y in range(k)]
    captions = getattr(build_dataset(cfg, "test"), "captions", None)
    if not captions:
        raise ValueError(f"dataset {cfg.name!r} has no captions for a text-to-image run")
    return list(dict.fromkeys(captions))[:k]


__all__ = [
    "CLASS_NAMES",
    "DATASET_NAMES",
    "DataConfig",
    "FashionMNIST",
    "ImageFolder",
    "ShapesDataset",
    "build_dataset",
    "class_caption",
    "grid_prompts",
    "read_idx",
]
