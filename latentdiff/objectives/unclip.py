"""unCLIP decoder training (Ramesh et al. 2022, section 2.1): the diffusion loss conditioned on the
CLIP image embedding of each image, with the caption as well where the run has text.

Classifier-free guidance needs both conditions dropped now and then, independently, at the paper's
rates: the image embedding is set to zero ``image_drop_prob`` = 10% of the time and the caption
dropped ``cond_drop_prob`` = 50% of the time (the run's DiffusionConfig; section 2.1, "randomly
setting the CLIP embeddings to zero (or a learned embedding) 10% of the time, and randomly dropping
the text caption 50% of the time"). A zero embedding is exactly what the U-Net sees when it is given
none (``nn.unet``), so the unconditional branch at sampling is the dropped condition of training.
"""

from __future__ import annotations

import dataclasses

import torch

from latentdiff.config import Config
from latentdiff.objectives.diffusion import DiffusionConfig, DiffusionLoss


@dataclasses.dataclass(frozen=True)
class UnCLIPConfig(Config):
    """An unCLIP decoder's CLIP model and the dropout of its embedding. ``clip_fingerprint`` is
    filled in at training time (``unclip.embeddings.clip_fingerprint``): a prior must share it."""

    clip: str = ""                # the CLIP-style checkpoint whose image embeddings condition the decoder
    image_drop_prob: float = 0.1  # share of training embeddings set to zero (the null condition)
    clip_fingerprint: str = ""    # filled in at training time: the CLIP weights' fingerprint

    def __post_init__(self):
        if not 0 <= self.image_drop_prob <= 1:
            raise ValueError(f"unclip.image_drop_prob must be in [0, 1], got {self.image_drop_prob}")


class DecoderLoss(DiffusionLoss):
    """``DiffusionLoss`` with ``batch["image_embed"]`` (B, D) passed on as ``cond["image_embed"]``,
    zeroed for each sample with probability ``image_drop_prob`` (one draw per sample, independent of
    the caption's)."""

    def __init__(self, cfg: DiffusionConfig, unclip: UnCLIPConfig, num_classes: int = 0):
        super().__init__(cfg, num_classes)
        self.unclip = unclip

    def cond_from_batch(self, batch: dict, generator: torch.Generator) -> dict:
        cond = super().cond_from_batch(batch, generator)
        embeds = batch["image_embed"]
        keep = torch.rand(len(embeds), generator=generator) >= self.unclip.image_drop_prob
        cond["image_embed"] = embeds * keep.to(embeds.device, embeds.dtype)[:, None]
        return cond
