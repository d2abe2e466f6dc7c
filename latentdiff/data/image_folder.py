"""A folder of images (optionally with class subfolders and caption sidecars).

Layout::

    root/
      cat/001.png  cat/001.txt   <- label "cat", caption from the .txt sidecar
      dog/a/b.jpg                <- label "dog" (first-level subfolder decides)
      metadata.jsonl             <- optional captions: {"file_name": "cat/001.png", "text": "..."} per line
      loose.png                  <- a top-level file: the set is unlabelled when there are no class
                                    folders; beside class folders it is skipped with a warning

Every image is decoded once at construction: centre-cropped to a square,
resized to ``image_size`` and converted to grey (``L``) or ``RGB``, then kept
as a uint8 tensor (N, C, S, S). Unreadable files are skipped with a single
warning that counts them.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .fashion_mnist import uint8_to_unit_range

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_MAX_NAMED_FAILURES = 3


def _load_square_image(path: Path, image_size: int, mode: str) -> np.ndarray:
    """Decode one file -> (S, S, C) uint8: convert (16-bit grey scaled, not clipped; see
    ``io.images.open_image``), centre crop to a square, resize. Unreadable files raise ValueError
    naming the file."""
    from PIL import Image

    from latentdiff.io.images import open_image

    image = open_image(path, mode)
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


def class_layout(root: Path, paths: list[Path], class_names: tuple[str, ...] | list[str] = ()):
    """Split ``paths`` (images under ``root``) by their first-level folder.

    Returns (class_names, labelled paths, loose paths): the sorted first-level folders holding images
    (or the given ``class_names``, in their order), the images inside them, and the images directly
    under ``root`` beside them (which a caller skips, so that one stray file does not unlabel the
    set). A folder without class folders gives ``([], paths, [])``: unlabelled. Raises ValueError
    when the folders are not the given ``class_names``."""
    inside = [p for p in paths if len(p.relative_to(root).parts) > 1]
    if not inside:
        return [], list(paths), []
    found = sorted({p.relative_to(root).parts[0] for p in inside})
    if class_names:
        unknown = [name for name in found if name not in class_names]
        if unknown:
            raise ValueError(f"{root}: class folder(s) {unknown} are not among data.class_names "
                             f"{list(class_names)} (the classes the model was trained on)")
        found = list(class_names)
    loose = [p for p in paths if len(p.relative_to(root).parts) == 1]
    return found, inside, loose


def read_captions(root: Path, paths: list[Path]) -> tuple[list[str] | None, str]:
    """One caption per image: its ``<stem>.txt`` sidecar, else its line in ``root/metadata.jsonl``
    (``{"file_name": path relative to root, "text" or "caption": ...}``), else "". Returns (captions or
    None when no image has one, the sources found: "<stem>.txt", "metadata.jsonl", both or "")."""
    table = {}
    metadata = root / "metadata.jsonl"
    if metadata.is_file():
        for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                table[(root / entry["file_name"]).resolve()] = str(entry.get("text", entry.get("caption", "")))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{metadata} line {number}: expected a JSON object with \"file_name\" and "
                                 f"\"text\", got {line[:60]!r} ({type(err).__name__}: {err})") from None
    captions, sources = [], set()
    for path in paths:
        sidecar = path.with_suffix(".txt")
        if sidecar.is_file():
            captions.append(sidecar.read_text(encoding="utf-8", errors="replace").strip())
            sources.add("<stem>.txt")
        elif path.resolve() in table:
            captions.append(table[path.resolve()].strip())
            sources.add("metadata.jsonl")
        else:
            captions.append("")
    return (captions if sources else None), " + ".join(sorted(sources))


def require_captions(paths: list[Path], captions: list[str] | None, root: Path) -> None:
    """ValueError naming the first image (in sorted order) without a caption (no ``<stem>.txt``, no
    ``metadata.jsonl`` line, or an empty one), for runs that learn from every image's caption."""
    missing = next((p for i, p in enumerate(paths) if captions is None or not captions[i].strip()), None)
    if missing is not None:
        n = len(paths) if captions is None else sum(not c.strip() for c in captions)
        raise ValueError(f"{missing} has no caption ({n} of the {len(paths)} images under {root} have none): put "
                         f"{missing.with_suffix('.txt').name} beside it, or a line {{\"file_name\": "
                         f"\"{missing.relative_to(root)}\", \"text\": ...}} in {root / 'metadata.jsonl'}; "
                         "or --set data.captions=none to train unconditionally")


class ImageFolder(Dataset):
    """Images under ``root``, decoded in memory.

    Args:
        root: folder to scan recursively for .png/.jpg/.jpeg/.bmp/.webp/.gif/.tif/.tiff files.
        image_size: side S of the stored square images.
        channels: 1 (grey) or 3 (RGB).
        labels_from_subfolders: label = index of the first-level subfolder name
            in ``class_names`` (sorted). Without subfolders the dataset is unlabelled
            (``num_classes = 0``, labels all 0); files directly under ``root`` beside
            class folders are skipped with a warning (``class_layout``).
        class_names: the classes in their label order (a checkpoint's ``data.class_names``, so that
            a test split missing a class keeps the training labels); () = the sorted subfolders.

    Attributes:
        images: (N, C, S, S) uint8.
        labels: (N,) int64.
        class_names: sorted first-level subfolder names ([] when unlabelled).
        captions: list of N strings, or None when no ``<stem>.txt`` or ``metadata.jsonl`` caption exists.
        caption_source: "<stem>.txt", "metadata.jsonl", both joined by " + ", or "".
        skipped_loose: top-level images skipped beside class folders.
        paths: list of N source paths.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 32,
        channels: int = 3,
        labels_from_subfolders: bool = True,
        class_names: tuple[str, ...] | list[str] = (),
    ):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        self.image_size = image_size
        self.channels = channels

        candidates = _scan(self.root)
        self.class_names, self.skipped_loose = [], []
        if labels_from_subfolders:
            self.class_names, candidates, self.skipped_loose = class_layout(self.root, candidates, class_names)
        if self.skipped_loose:
            named = ", ".join(p.name for p in self.skipped_loose[:_MAX_NAMED_FAILURES])
            more = "" if len(self.skipped_loose) <= _MAX_NAMED_FAILURES else ", ..."
            warnings.warn(f"ImageFolder({self.root}): skipped {len(self.skipped_loose)} image file(s) at the top "
                          f"level, outside the class folders {self.class_names}: {named}{more}", stacklevel=2)
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
        lookup = {name: i for i, name in enumerate(self.class_names)}
        labels = [lookup[p.relative_to(self.root).parts[0]] if lookup else 0 for p in self.paths]
        self.num_classes = len(self.class_names)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.captions, self.caption_source = read_captions(self.root, self.paths)

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
