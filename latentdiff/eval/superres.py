"""Super-resolution quality (DESIGN.md section 5): PSNR and SSIM against the ground truth, beside
bicubic upsampling of the same inputs, and the consistency of the output with its input.

PSNR and SSIM are scikit-image's (``skimage.metrics``) on images in [0, 1], per image, then
averaged; SSIM over the colour channels with its default 7x7 window. Consistency: an upsampler
"respects its input" when its output, downsampled the way the input was made (antialiased
bicubic), gives the input back; its PSNR against the input is reported (higher: more faithful).
"""

from __future__ import annotations

import numpy as np
import torch

from latentdiff.nn.superres import resample


def _unit(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) float64 in [0, 1]."""
    return ((images.detach().double().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()


def psnr_ssim(images: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM of (N, C, H, W) images against (N, C, H, W) ground truth, in [-1, 1]."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a, b = _unit(images), _unit(truth)
    psnr = [peak_signal_noise_ratio(t, x, data_range=1.0) for x, t in zip(a, b)]
    ssim = [structural_similarity(t, x, data_range=1.0, channel_axis=2) for x, t in zip(a, b)]
    return float(np.mean(psnr)), float(np.mean(ssim))


def superres_report(sr: torch.Tensor, low_res: torch.Tensor, truth: torch.Tensor) -> dict:
    """PSNR/SSIM of the upsampler's output ``sr`` and of bicubic upsampling of ``low_res`` against
    ``truth`` (all (N, C, ., .) in [-1, 1]), and both outputs' consistency with ``low_res``."""
    size, low_size = truth.shape[-1], low_res.shape[-1]
    bicubic = resample(low_res, size).clamp(-1, 1)
    psnr_sr, ssim_sr = psnr_ssim(sr, truth)
    psnr_bicubic, ssim_bicubic = psnr_ssim(bicubic, truth)
    return {"psnr_sr": psnr_sr, "psnr_bicubic": psnr_bicubic, "ssim_sr": ssim_sr, "ssim_bicubic": ssim_bicubic,
            "consistency_psnr": psnr_ssim(resample(sr, low_size), low_res)[0],
            "consistency_psnr_bicubic": psnr_ssim(resample(bicubic, low_size), low_res)[0], "n": len(truth)}
