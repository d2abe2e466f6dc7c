"""Datasets: Fashion-MNIST and image folders, with one dict interface.

Every dataset here keeps decoded uint8 images in memory and exposes

* ``__getitem__(i) -> {"x": (C, S, S) float in [-1, 1], "label": () int64, ...}``
* ``get_batch(index (B,)) -> {"x": (B, C, S, S), "label": (B,), ...}``
* attributes ``num_classes``, ``channels``, ``image_size``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch.utils.data import Dataset

from ..config import Config
from .fashion_mnist import CLASS_NAMES, FashionMNIST, read_idx
from .image_folder import ImageFolder

DATASET_NAMES = ("fmnist", "folder")


@dataclasses.dataclass(frozen=True)
class DataConfig(Config):
    """Which dataset to load.

    Attributes:
        name: ``"fmnist"`` or ``"folder"``.
        root: data folder; None means the default (Fashion-MNIST only).
        image_size: side S of the images.
        channels: 1 (grey) or 3 (RGB); Fashion-MNIST is always 1.
    """

    name: str = "fmnist"
    root: str | None = None
    image_size: int = 32
    channels: int = 1


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
    raise ValueError(f"unknown dataset name {cfg.name!r}; valid names: {list(DATASET_NAMES)}")


__all__ = [
    "CLASS_NAMES",
    "DATASET_NAMES",
    "DataConfig",
    "FashionMNIST",
    "ImageFolder",
    "build_dataset",
    "read_idx",
]
