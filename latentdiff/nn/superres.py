"""The super-resolution U-Net's conditioning input (SR3, Saharia et al. 2021; CDM, Ho et al. 2021;
Imagen, Saharia et al. 2022): the low-resolution image, upsampled to the output size with
antialiased bicubic resampling (``resample``), is concatenated to the noisy input on
channels; its noise-augmentation level in [0, 1] is embedded like a timestep scaled by
``AUG_LEVEL_SCALE`` (the discrete models' t runs over 0..999)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUG_LEVEL_SCALE = 1000.0


def resample(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) float images -> (B, C, size, size) (or (B, C, h, w) for ``size=(h, w)``): PIL's bicubic
    filter (a = -0.5, widened when downsampling: antialiased), computed in float32, returned in x's dtype."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    out = F.interpolate(x.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
    return out.to(x.dtype)


def low_res_input(low_res: torch.Tensor | None, size: int, channels: int) -> torch.Tensor:
    """(B, channels, h, w) low-res images in [-1, 1] (maybe noise-augmented) -> (B, channels, size, size)."""
    if low_res is None:
        raise ValueError("a super-resolution U-Net needs its low-resolution input (cond['low_res'])")
    if low_res.ndim != 4 or low_res.shape[1] != channels:
        raise ValueError(f"low_res must be (B, {channels}, h, w), got {tuple(low_res.shape)}")
    return resample(low_res, size)
