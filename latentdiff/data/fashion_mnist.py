"""Fashion-MNIST from the IDX files (Debian package ``dataset-fashion-mnist``).

The IDX format (LeCun et al.) is a big-endian header followed by raw data:

* 2 zero bytes, a type code (``0x08`` = uint8, ...), the number of dims ``d``;
* ``d`` big-endian int32 sizes;
* the array, row-major.

Images are decoded once at construction and kept in memory as a uint8 tensor
of shape (N, 1, S, S); ``__getitem__`` and ``get_batch`` map them to floats in
[-1, 1] on the fly.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
ROOT_ENV_VAR = "LATENTDIFF_FMNIST"

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# Captions for text-to-image on real data: a few names per class and a few templates.
CLASS_SYNONYMS = (
    ("T-shirt", "top", "tee"),
    ("pair of trousers", "pair of pants", "pair of jeans"),
    ("pullover", "sweater", "jumper"),
    ("dress", "summer dress", "frock"),
    ("coat", "jacket", "winter coat"),
    ("sandal", "summer sandal", "flip-flop"),
    ("shirt", "button-up shirt", "blouse"),
    ("sneaker", "trainer", "running shoe"),
    ("bag", "handbag", "purse"),
    ("ankle boot", "boot", "short boot"),
)
CAPTION_TEMPLATES = ("a photo of {a}", "{name}, product photo", "{a} on a black background",
                     "a grey picture of {a}", "{name}")


def class_caption(label: int, template: int = 0, synonym: int = 0) -> str:
    """"a photo of an ankle boot", "sneaker, product photo", ...: template and synonym by index."""
    name = CLASS_SYNONYMS[label][synonym]
    article = "an" if name[0].lower() in "aeiou" else "a"
    return CAPTION_TEMPLATES[template].format(a=f"{article} {name}", name=name)


def class_captions(labels: torch.Tensor, seed: int = 0) -> list[str]:
    """One caption per label, template and synonym drawn from ``seed`` (fixed per dataset item)."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randint(0, len(CAPTION_TEMPLATES), (len(labels),), generator=g).tolist()
    synonyms = torch.randint(0, 3, (len(labels),), generator=g).tolist()
    return [class_caption(int(y), t, s) for y, t, s in zip(labels.tolist(), templates, synonyms)]


# IDX type code -> numpy dtype (big-endian where it matters).
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX file (gzipped when the name ends in ``.gz``, else plain).

    Returns:
        A tensor with the shape stored in the header, e.g. (N, 28, 28) uint8
        for images or (N,) uint8 for labels. Multi-byte types are converted
        to native byte order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    type_code, num_dims = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{type_code:02x}")
    dtype = _IDX_DTYPES[type_code]
    header_end = 4 + 4 * num_dims
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">i4", count=num_dims, offset=4))
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - header_end < count * dtype.itemsize:
        raise ValueError(f"{path}: truncated IDX file (header says shape {shape})")
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=header_end).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def _find_idx_file(root: Path, stem: str) -> Path:
    """``root/stem.gz`` or ``root/stem``; raises FileNotFoundError naming the folder."""
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root}. "
        "Install it with `apt-get install dataset-fashion-mnist`, or pass root= "
        f"(or set ${ROOT_ENV_VAR}) to a folder with the IDX files."
    )


def resize_images(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Bring 28x28 uint8 images (N, 1, 28, 28) to (N, 1, S, S) uint8.

    28 -> 32 pads 2 black pixels on each side (the digits/clothes keep their
    pixel grid, as in the classic padded MNIST); other sizes use a bilinear
    resize of the 28x28 image.
    """
    size = images.shape[-1]
    if image_size == size:
        return images
    if image_size == size + 4:
        return F.pad(images, (2, 2, 2, 2), value=0)
    resized = F.interpolate(
        images.float(), size=(image_size, image_size), mode="bilinear",
        align_corners=False, antialias=image_size < size,
    )
    return resized.round().clamp(0, 255).to(torch.uint8)


def uint8_to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] -> float32 in [-1, 1] (same shape)."""
    return images.float().div(127.5).sub(1.0)


class FashionMNIST(Dataset):
    """Fashion-MNIST (60k train / 10k test, 10 classes), decoded in memory.

    Args:
        root: folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
            Default: ``$LATENTDIFF_FMNIST``, else ``/usr/share/datasets/fashion-mnist``.
        split: ``"train"`` or ``"test"``.
        image_size: side S of the returned images (32 pads, others resize).

    Attributes:
        images: (N, 1, S, S) uint8.
        labels: (N,) int64.
    """

    num_classes = 10
    channels = 1
    class_names = CLASS_NAMES

    def __init__(self, root: str | None = None, split: str = "train", image_size: int = 32):
        if split not in _SPLIT_PREFIX:
            raise ValueError(f"split must be one of {sorted(_SPLIT_PREFIX)}, got {split!r}")
        root = root or os.environ.get(ROOT_ENV_VAR) or DEFAULT_ROOT
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"Fashion-MNIST folder {self.root} does not exist. "
                "Install it with `apt-get install dataset-fashion-mnist`, or pass root= "
                f"(or set ${ROOT_ENV_VAR}) to a folder with the IDX files."
            )
        prefix = _SPLIT_PREFIX[split]
        images = read_idx(_find_idx_file(self.root, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find_idx_file(self.root, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{self.root}: unexpected IDX shapes images {tuple(images.shape)}, "
                f"labels {tuple(labels.shape)}"
            )
        self.split = split
        self.image_size = image_size
        self.images = resize_images(images.unsqueeze(1).to(torch.uint8), image_size).contiguous()
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def captions(self) -> list[str]:
        """One caption per image from its class name (``class_captions``; fixed for a split)."""
        if not hasattr(self, "_captions"):
            self._captions = class_captions(self.labels, seed=0 if self.split == "train" else 1)
        return self._captions

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        """Returns ``{"x": (1, S, S) float in [-1, 1], "label": () int64}``."""
        return {"x": uint8_to_unit_range(self.images[i]), "label": self.labels[i]}

    def get_batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Vectorised ``__getitem__``: index (B,) int64 -> ``{"x": (B, 1, S, S), "label": (B,)}``."""
        index = torch.as_tensor(index, dtype=torch.long)
        return {"x": uint8_to_unit_range(self.images[index]), "label": self.labels[index]}

    def __repr__(self) -> str:
        return (f"FashionMNIST(split={self.split!r}, n={len(self)}, "
                f"image_size={self.image_size}, root={str(self.root)!r})")
