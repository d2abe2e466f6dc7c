"""Super-resolution of images larger than an upscaler's training size, without seams: MultiDiffusion
(Bar-Tal et al. 2023, eq. 5) as a denoiser wrapper. At every sampler call the canvas is cut into
overlapping tiles of the upscaler's size, each tile is denoised with its own crop of the low-res
input, and the x0 predictions are averaged where tiles overlap (weighted by a ramp that falls
towards each tile's border), so that the sampler moves one consistent image.
"""

from __future__ import annotations

import torch
from torch import nn


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Offsets 0, stride, ... of tiles of ``tile`` covering [0, length); the last one ends at length."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def ramp(tile: int, device=None) -> torch.Tensor:
    """(tile, tile) weights: min(distance to the border + 1, tile / 2) along each axis, multiplied."""
    i = torch.arange(tile, device=device, dtype=torch.float32)
    w = torch.minimum(i + 1, tile - i).clamp(max=tile / 2)
    return w[:, None] * w[None, :]


class TiledSuperRes(nn.Module):
    """``TiledSuperRes(denoiser, tile, factor)(x (B, C, H, W), sigma, cond) -> x0_hat (B, C, H, W)`` for
    any H, W >= tile * factor, with ``cond["low_res"]`` (B, C, H / factor, W / factor) and the other
    entries (text, aug_level, ...) given to every tile as they are. Tiles overlap by half."""

    def __init__(self, denoiser: nn.Module, tile: int, factor: int):
        super().__init__()
        self.denoiser, self.tile, self.factor = denoiser, tile, factor

    def predict(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict | None = None):
        cond = dict(cond or {})
        low, (H, W), f, t = cond.pop("low_res"), x.shape[-2:], self.factor, self.tile
        T = t * f
        window = ramp(T, x.device).to(x.dtype)
        total, weight = torch.zeros_like(x), torch.zeros(H, W, device=x.device, dtype=x.dtype)
        for y in tile_starts(H // f, t, max(1, t // 2)):
            for z in tile_starts(W // f, t, max(1, t // 2)):
                tile_cond = {**cond, "low_res": low[..., y:y + t, z:z + t]}
                x0 = self.denoiser.predict(x[..., y * f:y * f + T, z * f:z * f + T], sigma, tile_cond)[0]
                total[..., y * f:y * f + T, z * f:z * f + T] += x0 * window
                weight[y * f:y * f + T, z * f:z * f + T] += window
        return total / weight, None

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict | None = None) -> torch.Tensor:
        return self.predict(x, sigma, cond)[0]
