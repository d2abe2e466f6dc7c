"""Captioner presets (DALL·E 3, Betker et al. 2023): an image captioner trained on the labelled share
of ``shapes`` (5% of the training images with their exact captions), writing short and descriptive
captions."""

from __future__ import annotations

import dataclasses

from latentdiff.captioning.model import CaptionerConfig
from latentdiff.config import Config
from latentdiff.data import DataConfig
from latentdiff.training.train_config import TrainConfig

TASKS = ("captioner", "upsampler")


@dataclasses.dataclass(frozen=True)
class CaptionerRunConfig(Config):
    """A captioner run (``task`` captioner) or a prompt upsampler run (``task`` upsampler: short caption
    -> descriptive caption, the same decoder conditioned on text): the captioned images, the labelled
    share of them it may read (a seeded subset; ``share_seed``), the model, and the training loop."""

    task: str = "captioner"       # the checkpoint kind: captioner | upsampler
    description: str = ""         # one line shown by `latentdiff presets`
    data: DataConfig = DataConfig(name="shapes", image_size=32, channels=3)
    labelled_share: float = 0.05  # share of the training images whose exact caption may be used
    share_seed: int = 0           # seed of the labelled subset
    mirror: bool = False          # also train on the labelled images flipped left to right, captions mirrored
    canonical_order: bool = False  # two objects always written left / upper one first
    input_noise: float = 0.0      # teacher-forcing word swap probability (captioning.text.CaptionLoss)
    captioner: CaptionerConfig = CaptionerConfig()
    train: TrainConfig = TrainConfig()

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)} in a captioner run config, got {self.task!r}")
        if not 0 < self.labelled_share <= 1:
            raise ValueError(f"labelled_share must be in (0, 1], got {self.labelled_share}")
        if (self.captioner.in_channels, self.captioner.image_size) != (self.data.channels, self.data.image_size):
            raise ValueError(f"captioner.in_channels/image_size {self.captioner.in_channels}/"
                             f"{self.captioner.image_size} must equal data.channels/image_size "
                             f"{self.data.channels}/{self.data.image_size}")


def is_captioner_config(config: dict) -> bool:
    """Whether a run's config dict is a captioner's or a prompt upsampler's."""
    return config.get("task") in TASKS


def shapes_captioner() -> CaptionerRunConfig:
    return CaptionerRunConfig(
        description="image captioner on the 5% labelled share of shapes (short and descriptive captions; "
                    "15 min on 2 CPU cores)",
        mirror=True, canonical_order=True, input_noise=0.3,
        captioner=CaptionerConfig(concepts=True, concept_prior=2.0),
        train=TrainConfig(batch_size=64, lr=1e-3, weight_decay=0.0, warmup_steps=100, grad_clip=1.0,
                          max_steps=100_000, max_minutes=15.0, ema_decay=0.995, mixed_precision="no",
                          sample_every=100_000, checkpoint_every=250, log_every=25))


def shapes_upsampler() -> CaptionerRunConfig:
    """Prompt upsampling (short -> descriptive) learned from the labelled share's caption pairs."""
    base = shapes_captioner()
    return as_upsampler(base, description="prompt upsampler on the 5% labelled share of shapes: short prompt -> "
                        "descriptive prompt, unspecified attributes sampled; 5 min on 2 CPU cores",
                        train=base.train.replace(max_minutes=5.0))


def as_upsampler(captioner: CaptionerRunConfig, **fields) -> CaptionerRunConfig:
    """A captioner preset's data, sizes and loop as a prompt upsampler's, without what reads images
    (word detectors, mirrored images) or reorders the captions it learns to write."""
    return captioner.replace(task="upsampler", mirror=False, canonical_order=False, input_noise=0.0,
                             captioner=captioner.captioner.replace(concepts=False, concept_prior=0.0), **fields)


def tiny_upsampler() -> CaptionerRunConfig:
    return as_upsampler(tiny_captioner(), description="tiny prompt upsampler, for tests")


def tiny_captioner() -> CaptionerRunConfig:
    return CaptionerRunConfig(
        description="tiny captioner on 64 shapes images (half of them labelled), for tests",
        data=DataConfig(name="shapes", image_size=16, channels=3, n=64), labelled_share=0.5,
        mirror=True, canonical_order=True, input_noise=0.3,
        captioner=CaptionerConfig(image_size=16, width=8, stage_mult=(1, 2), norm_groups=4, dim=32, layers=1, heads=2,
                                  concepts=True, concept_prior=2.0),
        train=TrainConfig(batch_size=16, lr=1e-3, warmup_steps=2, max_steps=4, checkpoint_every=2, log_every=2,
                          sample_every=4, ema_decay=0.9, mixed_precision="no"))
