"""DALL·E 3's caption blend (Betker et al. 2023, section 3.4): a text-to-image model trained on
synthetic captions sees its item's synthetic caption with probability p (the paper: 0.95) and its
original (ground-truth or web) caption otherwise, so that it still follows the short, plain prompts
people write. Drawn per item per step from the trainer's seeded generator, so a resumed run
draws the same captions as an uninterrupted one.
"""

from __future__ import annotations

import torch

TEXT_KEYS = ("text", "text_mask", "pooled")


def blend_captions(batch: dict, p: float, generator: torch.Generator) -> tuple[dict, torch.Tensor]:
    """A batch with both captions' conditions (``conditioning.BlendedText``) -> (the batch with one
    condition per item: the synthetic with probability p, else the original; which were synthetic (B,) bool)."""
    B = batch["text"].shape[0]
    synthetic = torch.rand(B, generator=generator) < p
    out = {k: v for k, v in batch.items() if not k.endswith("_original")}
    for key in TEXT_KEYS:
        pick = synthetic.to(batch[key].device).view(B, *([1] * (batch[key].ndim - 1)))
        out[key] = torch.where(pick, batch[key], batch[key + "_original"])
    return out, synthetic


class CaptionBlend:
    """A loss function on blended captions: ``loss_fn(model, blend_captions(batch), generator)``, logging
    the share of synthetic captions in the batch."""

    def __init__(self, loss_fn, p: float):
        self.loss_fn, self.p = loss_fn, p

    def __call__(self, model, batch: dict, generator: torch.Generator):
        blended, synthetic = blend_captions(batch, self.p, generator)
        loss, logs = self.loss_fn(model, blended, generator)
        return loss, {**logs, "synthetic_share": float(synthetic.float().mean())}
