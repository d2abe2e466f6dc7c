"""ControlNet presets (Zhang et al. 2023): edges and masks over the frozen text-to-image models."""

from __future__ import annotations

from latentdiff.data.control import ControlConfig
from latentdiff.nn.controlnet import ControlNetConfig
from latentdiff.presets.configs import ControlNetRunConfig, SampleConfig
from latentdiff.presets.diffusion import tiny
from latentdiff.training.train_config import TrainConfig


def shapes_controlnet_edges() -> ControlNetRunConfig:
    """ControlNet on Canny edges of shapes, over the frozen shapes-t2i model (runs/shapes-t2i first)."""
    return ControlNetRunConfig(
        description="ControlNet on shapes Canny edges over the frozen shapes-t2i model (train shapes-t2i into "
                    "runs/shapes-t2i first; 30 min on 2 CPU cores)",
        base="runs/shapes-t2i/checkpoint",
        control=ControlConfig(kind="edges", sigma=1.0, low=0.3, high=0.6),
        controlnet=ControlNetConfig(control_channels=1, control_size=32, hint_channels=16),
        train=TrainConfig(batch_size=64, lr=5e-4, warmup_steps=50, grad_clip=1.0, max_steps=100_000,
                          max_minutes=30.0, ema_decay=0.995, mixed_precision="auto", sample_every=250,
                          checkpoint_every=250, log_every=25),
        sample=SampleConfig(sampler="dpmpp_2m", steps=20, spacing="karras", guidance=2.0, n_grid=8),
    )


def shapes_controlnet_mask() -> ControlNetRunConfig:
    """ControlNet on the objects' silhouettes (chroma mask) of shapes."""
    base = shapes_controlnet_edges()
    return base.replace(description="ControlNet on shapes silhouette masks over the frozen shapes-t2i model "
                                    "(runs/shapes-t2i first; 30 min on 2 CPU cores)",
                        control=ControlConfig(kind="mask", chroma=0.25))


def fmnist_controlnet_edges() -> ControlNetRunConfig:
    """ControlNet on Canny edges of Fashion-MNIST over the frozen fmnist-t2i model (pixel space)."""
    base = shapes_controlnet_edges()
    return base.replace(description="ControlNet on Fashion-MNIST Canny edges over the frozen fmnist-t2i model "
                                    "(train fmnist-t2i into runs/fmnist-t2i first; 20 min on 2 CPU cores)",
                        base="runs/fmnist-t2i/checkpoint",
                        control=ControlConfig(kind="edges", sigma=1.5, low=0.1, high=0.3),
                        train=base.train.replace(max_minutes=20.0),
                        sample=base.sample.replace(guidance=3.0, threshold="dynamic"))


def tiny_controlnet() -> ControlNetRunConfig:
    base = shapes_controlnet_edges()
    return base.replace(description="tiny ControlNet over runs/tiny-t2i, for tests", base="runs/tiny-t2i/checkpoint",
                        controlnet=ControlNetConfig(control_channels=1, control_size=32, hint_channels=4),
                        train=tiny().train, sample=tiny().sample.replace(n_grid=4))


