"""Control fidelity (DESIGN.md section 5): how well generated images follow their control input.

* Edge F1 with a pixel tolerance (as in boundary benchmarks, e.g. BSDS, Martin et al. 2004): an edge
  pixel of the generated image's edge map is a hit when a control edge pixel lies within
  ``tolerance`` pixels (Chebyshev distance), and vice versa;
  precision = hits of the generated edges / their count, recall = hits of the control edges / their
  count, F1 = 2 P R / (P + R). Two empty maps agree perfectly (F1 = 1); one empty map scores 0.
* Mask IoU: |A and B| / |A or B| of the control silhouette and the generated image's (1 when both are empty).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dilate(maps: torch.Tensor, tolerance: int) -> torch.Tensor:
    """(N, 1, H, W) binary -> the same, grown by ``tolerance`` pixels in every direction (a square)."""
    if tolerance <= 0:
        return maps.bool()
    k = 2 * tolerance + 1
    return F.max_pool2d(maps.float(), k, stride=1, padding=tolerance).bool()


def edge_f1(generated: torch.Tensor, control: torch.Tensor, tolerance: int = 1) -> dict[str, torch.Tensor]:
    """Per-image {"f1", "precision", "recall"} (each (N,)) of two (N, 1, H, W) binary edge maps."""
    g, c = generated.bool(), control.bool()
    n_g, n_c = g.flatten(1).sum(1).float(), c.flatten(1).sum(1).float()
    precision = (g & dilate(c, tolerance)).flatten(1).sum(1) / n_g.clamp_min(1)
    recall = (c & dilate(g, tolerance)).flatten(1).sum(1) / n_c.clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    both_empty = (n_g == 0) & (n_c == 0)
    f1 = torch.where(both_empty, torch.ones_like(f1), f1)
    return {"f1": f1, "precision": torch.where(both_empty, 1.0, precision),
            "recall": torch.where(both_empty, 1.0, recall)}


def mask_iou(generated: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
    """(N,) IoU of two (N, 1, H, W) binary masks."""
    g, c = generated.bool().flatten(1), control.bool().flatten(1)
    union = (g | c).sum(1).float()
    iou = (g & c).sum(1).float() / union.clamp_min(1)
    return torch.where(union == 0, torch.ones_like(iou), iou)


def control_fidelity(kind: str, generated_maps: torch.Tensor, control: torch.Tensor,
                     tolerance: int = 1) -> dict[str, float]:
    """Mean fidelity of generated images' maps to the control maps: edges -> edge_f1 (+ precision,
    recall), mask -> mask_iou."""
    if kind == "edges":
        scores = edge_f1(generated_maps, control, tolerance)
        return {f"edge_{k}": float(v.mean()) for k, v in scores.items()} | {"tolerance_px": tolerance}
    if kind == "mask":
        return {"mask_iou": float(mask_iou(generated_maps, control).mean())}
    raise ValueError(f"unknown control kind {kind!r}")
