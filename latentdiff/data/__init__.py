"""Datasets: Fashion-MNIST, image folders, the procedural ``shapes`` and scikit-image photo crops
(``photos``), with one dict interface; and webdataset shards of any of them (``shards``, streamed).

Every dataset here keeps decoded uint8 images in memory and exposes

* ``__getitem__(i) -> {"x": (C, S, S) float in [-1, 1], "label": () int64, ...}``
* ``get_batch(index (B,)) -> {"x": (B, C, S, S), "label": (B,), ...}``
* attributes ``num_classes``, ``channels``, ``image_size``;
* ``captions`` (one string per item) where the dataset is captioned (``shapes``, ``fmnist``).

``shards`` (``data.root`` = a folder ``latentdiff prepare`` wrote) is streamed instead: a
``shard_stream.ShardDataset``, whose ``stream(...)`` gives the same batch dicts (``training.batches``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch.utils.data import Dataset

from ..config import Config
from .captions import check_source, with_caption_source
from .fashion_mnist import CLASS_NAMES, FashionMNIST, class_caption, read_idx
from .image_folder import ImageFolder, _scan
from .photos import PhotoCrops
from .resized import Downsampled
from .shard_stream import ShardDataset
from .shards import MANIFEST_FILE
from .shapes import ShapesDataset, held_out_prompts

DATASET_NAMES = ("fmnist", "folder", "shapes", "photos", "shards")
SHAPES_DEFAULT_SIZE = {"train": 50_000, "test": 5_000}
PHOTOS_DEFAULT_SIZE = {"train": 20_000, "test": 1_000}


@dataclasses.dataclass(frozen=True)
class DataConfig(Config):
    """Which dataset to load.

    Attributes:
        name: ``"fmnist"``, ``"folder"``, ``"shapes"``, ``"photos"`` (crops of scikit-image's photographs)
            or ``"shards"`` (a folder of webdataset shards, ``latentdiff prepare``; streamed).
        root: data folder; None means the default (Fashion-MNIST only).
        image_size: side S of the images.
        channels: 1 (grey) or 3 (RGB); Fashion-MNIST is always 1, ``shapes`` always 3.
        n: ``shapes``, ``photos``: images per split (None: 50,000 / 20,000 train, 5,000 / 1,000 test).
        seed: ``shapes``, ``photos``: the generator's seed.
        source_size: read (draw, crop) the images at this size, then downsample them (antialiased
            bicubic) to ``image_size``: what a cascade's base model is trained on; None: read at
            ``image_size``.
        captions: the training split's captions: ``exact`` (the dataset's), ``alt`` (its alt-text),
            ``recaption:PATH`` (a captioner's, ``latentdiff recaption``; ``data.captions``).
        caption_blend: with ``recaption:PATH``, the probability that a training item uses its
            synthetic caption (else its original, the alt-text), drawn per item per step
            (DALL·E 3: 0.95).
        class_names: ``folder`` only: the class folders in label order, filled in from the data
            when a run starts (``data.resolve.resolve_data``) and saved with the checkpoint, so that
            ``sample --class-label NAME`` works; () = unlabelled, or not resolved yet.
    """

    name: str = "fmnist"
    root: str | None = None
    image_size: int = 32
    channels: int = 1
    n: int | None = None
    seed: int = 0
    class_names: tuple[str, ...] = ()
    source_size: int | None = None
    captions: str = "exact"
    caption_blend: float = 0.95

    def __post_init__(self):
        # checked when the config is made, so a bad ``--set data.*`` fails before a run folder exists
        if self.name not in DATASET_NAMES:
            raise ValueError(f"data.name: unknown dataset {self.name!r}; valid: {', '.join(DATASET_NAMES)}")
        if self.image_size < 1:
            raise ValueError(f"data.image_size must be at least 1, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {self.channels}")
        if self.source_size is not None and self.source_size < self.image_size:
            raise ValueError(f"data.source_size={self.source_size} must be at least data.image_size={self.image_size}")
        if len(set(self.class_names)) != len(self.class_names) or not all(self.class_names):
            raise ValueError(f"data.class_names must be distinct non-empty names, got {list(self.class_names)}")
        check_source(self.captions)
        if not 0 <= self.caption_blend <= 1:
            raise ValueError(f"data.caption_blend must be in [0, 1], got {self.caption_blend}")


def build_dataset(cfg: DataConfig, split: str = "train") -> Dataset:
    """Build the dataset named by ``cfg`` for ``split``, its training captions from ``cfg.captions``."""
    return with_caption_source(_build_images(cfg, split), cfg, split)


def _build_images(cfg: DataConfig, split: str = "train") -> Dataset:
    """Build the dataset named by ``cfg`` for ``split`` ("train" or "test").

    A ``"folder"`` dataset uses ``root/<split>`` when ``root`` has both
    ``train`` and ``test`` subfolders, else the whole of ``root`` for any split.
    With ``source_size`` the images are read at that size and downsampled (``resized.Downsampled``).
    """
    if cfg.source_size is not None and cfg.source_size != cfg.image_size:
        full = _build_images(cfg.replace(image_size=cfg.source_size, source_size=None), split)
        return Downsampled(full, cfg.image_size)
    if cfg.name == "fmnist":
        if cfg.channels != 1:
            raise ValueError(f"Fashion-MNIST has 1 channel, DataConfig.channels={cfg.channels}")
        try:
            return FashionMNIST(root=cfg.root, split=split, image_size=cfg.image_size)
        except FileNotFoundError as err:
            if cfg.root is not None and Path(cfg.root).expanduser().is_dir() and _scan(Path(cfg.root).expanduser()):
                raise FileNotFoundError(f"{err}; {cfg.root} holds image files: to train on them use "
                                        f"`latentdiff train --data {cfg.root}` (data.name=folder)") from None
            raise
    if cfg.name == "folder":
        if cfg.root is None:
            raise ValueError("data.name=folder needs data.root = a folder of images (latentdiff train --data DIR)")
        return ImageFolder(str(split_root(cfg.root, split)), image_size=cfg.image_size, channels=cfg.channels,
                           class_names=cfg.class_names)
    if cfg.name == "shapes":
        if cfg.channels != 3:
            raise ValueError(f"shapes images have 3 channels, DataConfig.channels={cfg.channels}")
        n = cfg.n if cfg.n is not None else SHAPES_DEFAULT_SIZE.get(split, 5_000)
        return ShapesDataset(n=n, image_size=cfg.image_size, split=split, seed=cfg.seed)
    if cfg.name == "shards":
        return shard_dataset(cfg, split)
    if cfg.name == "photos":
        if cfg.channels != 3:
            raise ValueError(f"photo crops have 3 channels, DataConfig.channels={cfg.channels}")
        n = cfg.n if cfg.n is not None else PHOTOS_DEFAULT_SIZE.get(split, 1_000)
        return PhotoCrops(n=n, image_size=cfg.image_size, split=split, seed=cfg.seed)
    raise ValueError(f"unknown dataset name {cfg.name!r}; valid names: {list(DATASET_NAMES)}")


def shard_dataset(cfg: DataConfig, split: str = "train", latent_hash: str | None = None,
                  text: bool = False) -> ShardDataset:
    """The shard folder ``data.root`` (``root/<split>`` when it has train/ and test/ shard folders) as a
    streaming data set, its ``x`` the latents of ``latent_hash`` when given, with text embeddings if ``text``."""
    if cfg.root is None:
        raise ValueError("data.name=shards needs data.root = a folder written by `latentdiff prepare`")
    root = Path(cfg.root).expanduser()
    if (root / "train" / MANIFEST_FILE).is_file() and (root / "test" / MANIFEST_FILE).is_file():
        root = root / split
    data = ShardDataset(root, latent_hash=latent_hash, text=text)
    if latent_hash is None and (data.image_size != cfg.image_size or data.channels != cfg.channels):
        raise ValueError(f"data.root={cfg.root} holds {data.channels}-channel {data.image_size} px images but "
                         f"data.image_size={cfg.image_size}, data.channels={cfg.channels}: set them to match")
    return data


def has_splits(root: str | Path) -> bool:
    """Whether an image folder holds ``train/`` and ``test/`` subfolders (then used as the splits)."""
    root = Path(root).expanduser()
    return (root / "train").is_dir() and (root / "test").is_dir()


def split_root(root: str | Path, split: str) -> Path:
    """The folder of ``split``: ``root/<split>`` when ``root`` has train/ and test/, else ``root``."""
    root = Path(root).expanduser()
    return root / split if has_splits(root) else root


def require_test_split(cfg: DataConfig, purpose: str = "eval") -> None:
    """Refuse to score an image folder without held-out images against itself (FD floor ~0).
    Call before any sampling work."""
    if cfg.name == "folder" and cfg.root is not None and not has_splits(cfg.root):
        raise ValueError(
            f"{purpose} needs held-out images: the image folder {cfg.root} has no train/ and test/ subfolders, "
            f"so its samples would be scored against the training images themselves. Move most images into "
            f"{cfg.root}/train/ and some (a few hundred or more) into {cfg.root}/test/, with the same layout "
            f"in each (the same class folders, captions beside their images), train with --data {cfg.root}, "
            f"then evaluate")


def grid_prompts(cfg: DataConfig, k: int = 10) -> list[str]:
    """k prompts to show while training a text-to-image model: ``shapes``: held-out prompts (half
    one object, half two); ``fmnist``: one caption per class; else the test split's first captions."""
    if cfg.name == "shapes":
        return held_out_prompts(n=k)
    if cfg.name == "fmnist":
        return [class_caption(y % 10) for y in range(k)]
    if cfg.name == "shards":
        captions = shard_dataset(cfg, "test").preview_captions
        if not captions:
            raise ValueError(f"the shards in {cfg.root} have no captions for a text-to-image run")
        return captions[:k]
    captions = getattr(build_dataset(cfg, "test"), "captions", None)
    if not captions:
        raise ValueError(f"dataset {cfg.name!r} has no captions for a text-to-image run")
    return list(dict.fromkeys(captions))[:k]


__all__ = [
    "CLASS_NAMES",
    "DATASET_NAMES",
    "DataConfig",
    "Downsampled",
    "FashionMNIST",
    "ImageFolder",
    "PhotoCrops",
    "ShapesDataset",
    "ShardDataset",
    "build_dataset",
    "class_caption",
    "grid_prompts",
    "has_splits",
    "require_test_split",
    "shard_dataset",
    "split_root",
    "read_idx",
]
