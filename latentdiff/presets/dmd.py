"""Distribution Matching Distillation presets (Yin et al. 2024: DMD, DMD2) of the demo model."""

from __future__ import annotations

from latentdiff.objectives.dmd import DMDConfig
from latentdiff.presets.configs import DMDRunConfig, PairsConfig
from latentdiff.presets.diffusion import tiny
from latentdiff.training.train_config import TrainConfig


def fmnist_dmd() -> DMDRunConfig:
    """DMD of the demo model (fmnist-ddpm, in demo_out/checkpoint; or --set teacher=PATH)."""
    return DMDRunConfig(
        description="DMD one-step student of the Fashion-MNIST demo model (demo_out/checkpoint; --set teacher=PATH): "
                    "distribution matching + regression on 1000 teacher pairs, 45 min on 2 CPU cores in all",
        teacher="demo_out/checkpoint",
        dmd=DMDConfig(guidance=2.0, regression_weight=0.25),
        pairs=PairsConfig(n=1000, sampler="ddim", steps=20, spacing="trailing"),
        train=TrainConfig(batch_size=32, lr=1e-4, warmup_steps=20, grad_clip=1.0, max_steps=100_000,
                          max_minutes=41.0, ema_decay=0.99, mixed_precision="auto", sample_every=250,
                          checkpoint_every=100, log_every=10),
        sample=DMDRunConfig.sample.replace(n_grid=100),
    )


def fmnist_dmd2() -> DMDRunConfig:
    """DMD2: no regression; 3 fake-score updates per generator update, GAN head, 4-step generator."""
    base = fmnist_dmd()
    return base.replace(description="DMD2 4-step student of the Fashion-MNIST demo model (demo_out/checkpoint; "
                                    "--set teacher=PATH): 3 fake-score updates per generator update (the paper: 5, for "
                                    "far longer runs), GAN on the fake score, backward simulation; 45 min",
                        dmd=DMDConfig(guidance=2.0, regression_weight=0.0, fake_updates=3, gan_weight=3e-3,
                                      disc_weight=1e-2, student_steps=4),
                        pairs=PairsConfig(n=0), train=base.train.replace(max_minutes=45.0),
                        sample=base.sample.replace(steps=4))


def tiny_dmd() -> DMDRunConfig:
    return fmnist_dmd().replace(description="tiny DMD of runs/tiny, for tests", teacher="runs/tiny/checkpoint",
                                 pairs=PairsConfig(n=32, steps=2), dmd=DMDConfig(),
                                 train=tiny().train.replace(batch_size=8, mixed_precision="no"),
                                 sample=DMDRunConfig.sample.replace(n_grid=20))


def tiny_dmd2() -> DMDRunConfig:
    return fmnist_dmd2().replace(description="tiny DMD2 of runs/tiny, for tests", teacher="runs/tiny/checkpoint",
                                  train=tiny_dmd().train, sample=tiny_dmd().sample.replace(steps=2),
                                  dmd=fmnist_dmd2().dmd.replace(student_steps=2, fake_updates=2))


