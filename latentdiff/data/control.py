"""Control signals for ControlNet, computed by scikit-image / scipy, and datasets of (image, caption,
control) triples.

* ``edges``: Canny (1986) edge maps, ``skimage.feature.canny`` on every channel of the image in
  [0, 1], OR-ed over channels. Sigma and hysteresis thresholds are per dataset (``ControlConfig``):
  on ``shapes`` sigma 1 and thresholds 0.3 / 0.6 keep the object outlines and drop the background
  stripes; on Fashion-MNIST sigma 1.5 and 0.1 / 0.3 keep the silhouette and the main seams.
* ``mask``: the foreground silhouette. Colour images with an achromatic background (``shapes``):
  pixels whose chroma max(R, G, B) - min(R, G, B) exceeds ``chroma``; grey images: pixels above
  Otsu's threshold (``skimage.filters.threshold_otsu``), holes filled (``scipy.ndimage``).

Controls are (N, 1, S, S) maps in {0, 1}; the same functions read the generated images back for
the control-fidelity metrics (eval/control.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from scipy import ndimage
from skimage.feature import canny
from skimage.filters import threshold_otsu
from tqdm.auto import tqdm

from ..config import Config

CONTROL_KINDS = ("edges", "mask")


@dataclasses.dataclass(frozen=True)
class ControlConfig(Config):
    """Which control map to compute: ``kind`` edges | mask, Canny's ``sigma`` and hysteresis
    thresholds ``low``/``high`` (on gradients of images in [0, 1]), the mask's ``chroma`` threshold."""

    kind: str = "edges"
    sigma: float = 1.0
    low: float = 0.3
    high: float = 0.6
    chroma: float = 0.25


def _as_unit(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) uint8 or float in [-1, 1] -> float64 numpy in [0, 1]."""
    if images.dtype == torch.uint8:
        return images.numpy().astype(np.float64) / 255.0
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2).numpy().astype(np.float64)


def canny_edges(image: np.ndarray, cfg: ControlConfig) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) bool: Canny on every channel, OR-ed."""
    maps = [canny(channel, sigma=cfg.sigma, low_threshold=cfg.low, high_threshold=cfg.high) for channel in image]
    return np.logical_or.reduce(maps)


def silhouette(image: np.ndarray, cfg: ControlConfig) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) bool foreground: chroma above ``cfg.chroma`` (colour images),
    else above Otsu's threshold with holes filled (grey images)."""
    if image.shape[0] == 3:
        return (image.max(0) - image.min(0)) > cfg.chroma
    grey = image[0]
    if grey.max() - grey.min() < 1e-6:
        return np.zeros(grey.shape, bool)
    return ndimage.binary_fill_holes(grey > threshold_otsu(grey))


def control_maps(images: torch.Tensor, cfg: ControlConfig, progress: bool = False) -> torch.Tensor:
    """(N, C, H, W) images (uint8, or float in [-1, 1]) -> (N, 1, H, W) uint8 control maps in {0, 1}."""
    if cfg.kind not in CONTROL_KINDS:
        raise ValueError(f"unknown control kind {cfg.kind!r}; valid: {list(CONTROL_KINDS)}")
    fn = canny_edges if cfg.kind == "edges" else silhouette
    unit = _as_unit(images)
    out = np.stack([fn(im, cfg) for im in tqdm(unit, desc=f"control {cfg.kind}", disable=not progress)])
    return torch.from_numpy(out.astype(np.uint8))[:, None]


def cached_control_maps(dataset, cfg: ControlConfig, key: str) -> torch.Tensor:
    """``control_maps`` of every image of an in-memory dataset (``.images`` uint8 or ``get_batch``),
    cached on disk under ``cache_dir()/control`` by (``key``, cfg)."""
    from ..eval.fd import cache_dir  # the one cache root

    digest = hashlib.sha1(json.dumps([key, cfg.to_dict()], sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "control" / f"{digest}.safetensors"
    if path.exists():
        return load_file(path)["control"]
    images = getattr(dataset, "images", None)
    if images is None:
        images = dataset.get_batch(torch.arange(len(dataset)))["x"]
    maps = control_maps(images, cfg, progress=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"control": maps.contiguous()}, str(tmp))
    tmp.replace(path)
    return maps


class ControlDataset:
    """A ``get_batch`` dataset whose items carry a control map: batches gain ``"control"``
    (B, 1, S, S) float in {0, 1}. ``controls`` (N, 1, S, S) uint8, aligned with the dataset's items
    (the pixel dataset's maps also serve its latent cache, which keeps the same order)."""

    def __init__(self, base, controls: torch.Tensor):
        if len(controls) != len(base):
            raise ValueError(f"{len(controls)} control maps for a dataset of {len(base)} items")
        self.base, self.controls = base, controls
        self.num_classes = getattr(base, "num_classes", 0)

    def __len__(self) -> int:
        return len(self.base)

    def get_batch(self, index: torch.Tensor) -> dict:
        index = torch.as_tensor(index, dtype=torch.long)
        return {**self.base.get_batch(index), "control": self.controls[index].float()}
