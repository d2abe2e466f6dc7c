"""A folder of images (optionally with class subfolders and caption sidecars).

Layout::

    root/
      cat/001.png  cat/001.txt   <- label "cat", caption from the .txt sidecar
      dog/a/b.jpg                <- label "dog" (first-level subfolder decides)
      loose.png                  <- a top-level file (only when no subfolders)

Every image is decoded once at construction: centre-cropped to a square,
resized to ``image_size`` and converted to grey (``L``) or ``RGB``, then kept
as a uint8 tensor (N, C, S, S). Unreadable files are skipped with a single
warning that counts them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .fashion_mnist import uint8_to_unit_range

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_MAX_NAMED_FAILURES = 3


def _load_square_image(path: Path, image_size: int, mode: str) -> np.ndarray:
    """Decode one file -> (S, S, C) uint8: centre crop to a square, resize, convert."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        image = image.convert(mode)
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != image_size:
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _scan(root: Path) -> list[Path]:
    """All image files under ``root`` (recursive), in sorted order."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class ImageFolder(Dataset):
    """Images under ``root``, decoded in memory.

    Args:
        root: folder to scan recursively for .png/.jpg/.jpeg/.bmp/.webp files.
        image_size: side S of the stored square images.
        channels: 1 (grey) or 3 (RGB).
        labels_from_subfolders: label = index of the first-level subfolder name
            in ``class_names`` (sorted). Files directly under ``root`` make the
            dataset unlabelled (``num_classes = 0``, labels all 0).

    Attributes:
        images: (N, C, S, S) uint8.
        labels: (N,) int64.
        class_names: sorted first-level subfolder names ([] when unlabelled).
        captions: list of N strings, or None when no ``<stem>.txt`` exists.
        paths: list of N source paths.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 32,
        channels: int = 3,
        labels_from_subfolders: bool = True,
    ):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        self.image_size = image_size
        self.channels = channels

        candidates = _scan(self.root)
        arrays, self.paths, failures = [], [], []
        mode = "L" if channels == 1 else "RGB"
        for path in candidates:
            try:
                arrays.append(_load_square_image(path, image_size, mode))
            except Exception as error:  # PIL raises many types for corrupt files
                failures.append((path, error))
                continue
            self.paths.append(path)

        if failures:
            named = ", ".join(str(p.relative_to(self.root)) for p, _ in failures[:_MAX_NAMED_FAILURES])
            more = "" if len(failures) <= _MAX_NAMED_FAILURES else ", ..."
            warnings.warn(
                f"ImageFolder({self.root}): skipped {len(failures)} unreadable image "
                f"file(s): {named}{more}",
                stacklevel=2,
            )
        if not self.paths:
            raise ValueError(
                f"no readable images ({'/'.join(IMAGE_SUFFIXES)}) found under {self.root} "
                f"({len(candidates)} candidate file(s), {len(failures)} unreadable)"
            )

        self.images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        self._set_labels(labels_from_subfolders)
        self.captions = self._read_captions()

    def _set_labels(self, labels_from_subfolders: bool) -> None:
        """Labels from first-level subfolders; unlabelled if any file sits at top level."""
        first_parts = [p.relative_to(self.root).parts for p in self.paths]
        labelled = labels_from_subfolders and all(len(parts) > 1 for parts in first_parts)
        if labelled:
            self.class_names = sorted({parts[0] for parts in first_parts})
            lookup = {name: i for i, name in enumerate(self.class_names)}
            labels = [lookup[parts[0]] for parts in first_parts]
        else:
            self.class_names = []
            labels = [0] * len(self.paths)
        self.num_classes = len(self.class_names)
        self.labels = torch.tensor(labels, dtype=torch.int64)

    def _read_captions(self) -> list[str] | None:
        """Sidecar ``<stem>.txt`` captions; None when no image has one ("" where missing)."""
        captions, found = [], False
        for path in self.paths:
            sidecar = path.with_suffix(".txt")
            if sidecar.is_file():
                captions.append(sidecar.read_text(encoding="utf-8", errors="replace").strip())
                found = True
            else:
                captions.append("")
        return captions if found else None

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int) -> dict:
        """Returns ``{"x": (C, S, S) float in [-1, 1], "label": () int64[, "caption": str]}``."""
        item = {"x": uint8_to_unit_range(self.images[i]), "label": self.labels[i]}
        if self.captions is not None:
            item["caption"] = self.captions[i]
        return item

    def get_batch(self, index: torch.Tensor) -> dict:
        """index (B,) int64 -> ``{"x": (B, C, S, S), "label": (B,)[, "caption": list[str]]}``."""
        index = torch.as_tensor(index, dtype=torch.long)
        batch = {"x": uint8_to_unit_range(self.images[index]), "label": self.labels[index]}
        if self.captions is not None:
            batch["caption"] = [self.captions[i] for i in index.tolist()]
        return batch

    def __repr__(self) -> str:
        return (f"ImageFolder(root={str(self.root)!r}, n={len(self)}, image_size={self.image_size}, "
                f"channels={self.channels}, num_classes={self.num_classes})")
