"""unCLIP presets (DALL·E 2, Ramesh et al. 2022): diffusion priors from captions to CLIP image
embeddings, and decoders from CLIP image embeddings to images, on ``shapes`` and Fashion-MNIST.

Both need a CLIP-style checkpoint (``presets.clip``) first: ``runs/shapes-clip/checkpoint`` or
``runs/fmnist-clip/checkpoint`` (``--set clip=...`` / ``--set unclip.clip=...`` for another).
The shapes pair splits the Imagen-style model's 30 minutes (``shapes-t2i-pixel``) into 6 for the
prior and 24 for the decoder, the comparison of README's unCLIP section at equal training time.
The decoders are the pixel text-to-image U-Net with the image embedding added to the time
embedding and as 4 extra context tokens.
"""

from __future__ import annotations

import dataclasses

from latentdiff.conditioning.text import TextConfig
from latentdiff.config import Config
from latentdiff.data import DataConfig
from latentdiff.nn.prior import PriorConfig
from latentdiff.objectives.diffusion import DiffusionConfig
from latentdiff.objectives.unclip import UnCLIPConfig
from latentdiff.presets.configs import RunConfig, SampleConfig
from latentdiff.presets.diffusion import fmnist_ddpm, shapes_t2i_pixel, tiny_t2i
from latentdiff.training.train_config import TrainConfig


@dataclasses.dataclass(frozen=True)
class PriorRunConfig(Config):
    """A diffusion prior run: the CLIP model whose embeddings it maps between, the captioned images
    whose (caption, image embedding) pairs it learns, the caption's frozen text encoder, the
    transformer, the diffusion it is trained with (x0 target, 10% of captions dropped), and how it
    samples: ``candidates`` embeddings per prompt, the one nearest the caption's CLIP text
    embedding kept (section 2.2). ``clip_fingerprint`` is filled in at training time."""

    task: str = "prior"           # the checkpoint kind (fixed)
    description: str = ""         # one line shown by `latentdiff presets`
    clip: str = ""                # the CLIP-style checkpoint
    clip_fingerprint: str = ""    # filled in at training time: the CLIP weights' fingerprint
    data: DataConfig = DataConfig()
    text: TextConfig = TextConfig(max_length=16)
    prior: PriorConfig = PriorConfig(width=128, layers=4, heads=4)
    diffusion: DiffusionConfig = DiffusionConfig(schedule="cosine", parameterisation="x0", cond_drop_prob=0.1)
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig(sampler="dpmpp_2m", steps=20, spacing="karras", guidance=1.0)
    candidates: int = 2           # image embeddings drawn per prompt; the most similar to the text is kept

    def __post_init__(self):
        if self.task != "prior":
            raise ValueError(f"task must be 'prior' in a prior run config, got {self.task!r}")
        if self.prior.max_length != self.text.max_length:
            raise ValueError(f"prior.max_length={self.prior.max_length} must equal text.max_length="
                             f"{self.text.max_length} (the caption tokens it reads)")
        if self.diffusion.learned_variance:
            raise ValueError("a diffusion prior has no learned variance (diffusion.learned_variance must be false)")
        if self.candidates < 1:
            raise ValueError(f"candidates must be at least 1, got {self.candidates}")


def is_prior_config(config: dict) -> bool:
    """Whether a run's config dict is a diffusion prior's."""
    return config.get("task") == "prior"


def _prior_train(minutes: float) -> TrainConfig:
    return TrainConfig(batch_size=128, lr=1e-3, weight_decay=0.0, warmup_steps=100, grad_clip=1.0, max_steps=100_000,
                       max_minutes=minutes, ema_decay=0.995, mixed_precision="no", sample_every=100_000,
                       checkpoint_every=250, log_every=25)


def _prior(dataset: str, channels: int) -> PriorRunConfig:
    """The prior on ``dataset``'s captions and its ``<dataset>-clip`` model's embeddings, 6 minutes."""
    return PriorRunConfig(
        description=f"unCLIP diffusion prior on {dataset} captions -> {dataset}-clip image embeddings (train "
                    f"{dataset}-clip into runs/{dataset}-clip first); 6 min on 2 CPU cores",
        clip=f"runs/{dataset}-clip/checkpoint", data=DataConfig(name=dataset, image_size=32, channels=channels),
        train=_prior_train(6.0))


def shapes_prior() -> PriorRunConfig:
    return _prior("shapes", 3)


def fmnist_prior() -> PriorRunConfig:
    return _prior("fmnist", 1)


def shapes_unclip_decoder() -> RunConfig:
    """shapes-t2i-pixel's U-Net and recipe, also conditioned on the shapes-clip image embedding;
    captions dropped 50% and embeddings 10% of the time (the paper's rates)."""
    base = shapes_t2i_pixel()
    return base.replace(
        description="unCLIP decoder on shapes: shapes-clip image embedding (+ caption) -> 32 px image, pixel space "
                    "(train shapes-clip into runs/shapes-clip first); 24 min on 2 CPU cores",
        model=base.model.replace(image_embed_dim=128),
        diffusion=base.diffusion.replace(cond_drop_prob=0.5),
        unclip=UnCLIPConfig(clip="runs/shapes-clip/checkpoint"),
        train=base.train.replace(max_minutes=24.0),
    )


def fmnist_unclip_decoder() -> RunConfig:
    """The demo's pixel U-Net conditioned on the fmnist-clip image embedding alone (no caption, no
    label): what image variations need."""
    base = fmnist_ddpm()
    return base.replace(
        description="unCLIP decoder on Fashion-MNIST: fmnist-clip image embedding -> 32 px image (train "
                    "fmnist-clip into runs/fmnist-clip first); 12 min on 2 CPU cores",
        model=base.model.replace(num_classes=0, image_embed_dim=128, context_dim=128),
        diffusion=base.diffusion.replace(cond_drop_prob=0.0),
        unclip=UnCLIPConfig(clip="runs/fmnist-clip/checkpoint"),
        sample=base.sample.replace(guidance=3.0),  # the best of 1, 2, 3, 5 for variations (README, unCLIP)
    )


def tiny_prior() -> PriorRunConfig:
    return PriorRunConfig(
        description="tiny diffusion prior on tiny-clip embeddings (train tiny-clip into runs/tiny-clip first), "
                    "for tests",
        clip="runs/tiny-clip/checkpoint", data=DataConfig(name="shapes", image_size=16, channels=3, n=64),
        prior=PriorConfig(embed_dim=16, width=32, layers=2, heads=2),
        train=TrainConfig(batch_size=16, lr=1e-3, warmup_steps=2, max_steps=4, checkpoint_every=2, log_every=2,
                          sample_every=4, ema_decay=0.9, mixed_precision="no"),
        sample=SampleConfig(steps=4))


def tiny_unclip_decoder() -> RunConfig:
    base = tiny_t2i()
    return base.replace(description="tiny unCLIP decoder on tiny-clip embeddings, for tests",
                        data=base.data.replace(image_size=16),
                        model=base.model.replace(image_size=16, image_embed_dim=16),
                        diffusion=base.diffusion.replace(cond_drop_prob=0.5),
                        unclip=UnCLIPConfig(clip="runs/tiny-clip/checkpoint"))
