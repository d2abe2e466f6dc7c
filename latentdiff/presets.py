"""Named, documented run presets: a ``RunConfig`` is everything a training run and its sampling need.

``latentdiff presets`` lists them; ``latentdiff train --preset NAME --set train.lr=1e-3`` overrides
any field. The config is saved with every checkpoint, so a checkpoint rebuilds its own model.
"""

from __future__ import annotations

import dataclasses

from latentdiff.config import Config
from latentdiff.data import DataConfig
from latentdiff.nn.unet import UNetConfig
from latentdiff.objectives.diffusion import DiffusionConfig
from latentdiff.training.trainer import TrainConfig


@dataclasses.dataclass(frozen=True)
class SampleConfig(Config):
    """Default sampling for a run: sampler name, step count, sigma spacing, guidance scale."""

    sampler: str = "dpmpp_2m"
    steps: int = 20
    spacing: str = "karras"       # leading | trailing | linspace | karras
    guidance: float = 1.0         # classifier-free guidance scale (1 = conditional model)
    use_ema: bool = True
    n_grid: int = 100             # images in the periodic training grids


@dataclasses.dataclass(frozen=True)
class RunConfig(Config):
    description: str = ""
    data: DataConfig = DataConfig()
    model: UNetConfig = UNetConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()


def _fmnist_ddpm() -> RunConfig:
    """The demo model (see README, "What mattered"): a small class-conditional U-Net, v-prediction
    with min-SNR-5 weighting, cosine schedule, high learning rate with warm-up, EMA, CFG-ready label dropout."""
    return RunConfig(
        description="class-conditional pixel DDPM on Fashion-MNIST 32x32 (the demo; ~12 min on 2 CPU cores)",
        data=DataConfig(name="fmnist", image_size=32, channels=1),
        model=UNetConfig(image_size=32, in_channels=1, channels=64, channel_mult=(1, 2, 2), num_res_blocks=1,
                         attention_resolutions=(8,), num_heads=2, dropout=0.0, num_classes=10, norm_groups=8,
                         patch_size=2),
        diffusion=DiffusionConfig(schedule="cosine", parameterisation="v", min_snr_gamma=5.0, cond_drop_prob=0.1),
        train=TrainConfig(batch_size=64, lr=1e-3, warmup_steps=100, grad_clip=1.0, max_steps=100_000,
                          max_minutes=12.0, ema_decay=0.995, mixed_precision="bf16", sample_every=500,
                          checkpoint_every=250, log_every=25),
        sample=SampleConfig(sampler="dpmpp_2m", steps=20, spacing="karras", guidance=2.0),
    )


def _fmnist_ddpm_paper() -> RunConfig:
    """Ho et al. 2020 as stated: eps target, plain MSE (Algorithm 1), linear betas, 1000 ancestral steps."""
    return RunConfig(
        description="DDPM exactly as Ho et al. 2020 (eps, L_simple, linear betas), unconditional Fashion-MNIST",
        model=UNetConfig(channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(16,),
                         dropout=0.1, num_classes=0),
        diffusion=DiffusionConfig(schedule="linear", parameterisation="eps"),
        train=TrainConfig(batch_size=128, lr=2e-4, warmup_steps=5000, ema_decay=0.9999, max_steps=800_000),
        sample=SampleConfig(sampler="ddpm", steps=1000, spacing="leading"),
    )


def _fmnist_iddpm() -> RunConfig:
    """Improved DDPM: cosine schedule, learned variance with the hybrid loss."""
    base = _fmnist_ddpm()
    return base.replace(
        description="Improved DDPM (cosine schedule, learned variance, hybrid loss), class-conditional",
        diffusion=DiffusionConfig(schedule="cosine", parameterisation="eps", learned_variance=True,
                                  cond_drop_prob=0.1),
        sample=base.sample.replace(sampler="ddpm", steps=100, spacing="trailing"),
    )


def _tiny() -> RunConfig:
    """For tests and smoke runs: a few thousand parameters, a handful of steps."""
    return RunConfig(
        description="tiny smoke-test config (seconds on CPU)",
        model=UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                         dropout=0.0, num_classes=10, norm_groups=4),
        diffusion=DiffusionConfig(schedule="cosine", parameterisation="v", min_snr_gamma=5.0, cond_drop_prob=0.1),
        train=TrainConfig(batch_size=16, lr=1e-3, warmup_steps=5, max_steps=6, sample_every=6,
                          checkpoint_every=3, log_every=2),
        sample=SampleConfig(steps=4, guidance=2.0, n_grid=20),
    )


PRESETS = {
    "fmnist-ddpm": _fmnist_ddpm,
    "fmnist-ddpm-paper": _fmnist_ddpm_paper,
    "fmnist-iddpm": _fmnist_iddpm,
    "tiny": _tiny,
}


def get_preset(name: str) -> RunConfig:
    """The preset called ``name``; unknown names list the valid ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]()


def describe_presets() -> list[tuple[str, str]]:
    return [(name, make().description) for name, make in PRESETS.items()]
