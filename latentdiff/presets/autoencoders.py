"""Autoencoder presets: KL and VQ autoencoders for latent diffusion (Rombach et al. 2021)."""

from __future__ import annotations

from latentdiff.autoencoders.losses import AutoencoderLossConfig
from latentdiff.autoencoders.models import AutoencoderConfig
from latentdiff.data import DataConfig
from latentdiff.presets.configs import AutoencoderRunConfig
from latentdiff.training.train_config import TrainConfig


def fmnist_vae() -> AutoencoderRunConfig:
    """KL-VAE f=4, 4 latent channels (Rombach et al. 2021's KL-f4 shape): 32x32x1 -> 8x8x4."""
    return AutoencoderRunConfig(
        description="KL-regularised autoencoder f=4, 8x8x4 latents, for Fashion-MNIST (~15 min on 2 CPU cores)",
        autoencoder=AutoencoderConfig(kind="kl", channels=32, channel_mult=(1, 2, 2), num_res_blocks=1),
        loss=AutoencoderLossConfig(reconstruction="l1", perceptual_weight=1.0, perceptual_size=32, kl_weight=1e-6),
        train=TrainConfig(batch_size=32, lr=1e-3, warmup_steps=100, grad_clip=1.0, max_steps=100_000,
                          max_minutes=15.0, ema_decay=0.999, mixed_precision="no", sample_every=500,
                          checkpoint_every=250, log_every=25),
    )


def fmnist_vqvae() -> AutoencoderRunConfig:
    """VQ-VAE f=4, 4-dimensional codes, 512 of them, EMA codebook with dead-code restarts."""
    base = fmnist_vae()
    return base.replace(
        description="VQ-regularised autoencoder f=4, 8x8 codes of 512, for Fashion-MNIST (~15 min on 2 CPU cores)",
        autoencoder=base.autoencoder.replace(kind="vq", num_codes=512),
    )


def shapes_vae() -> AutoencoderRunConfig:
    """KL-VAE f=4 for the 32x32 RGB ``shapes`` images: 32x32x3 -> 8x8x4."""
    base = fmnist_vae()
    return base.replace(
        description="KL-regularised autoencoder f=4, 8x8x4 latents, for shapes (~21 min on 2 CPU cores)",
        data=DataConfig(name="shapes", image_size=32, channels=3),
        autoencoder=base.autoencoder.replace(in_channels=3),
        train=base.train.replace(max_minutes=21.0),
    )


def tiny_vae() -> AutoencoderRunConfig:
    return AutoencoderRunConfig(
        description="tiny KL autoencoder for tests (seconds on CPU)",
        autoencoder=AutoencoderConfig(kind="kl", channels=8, channel_mult=(1, 2), norm_groups=4, latent_channels=2),
        loss=AutoencoderLossConfig(perceptual_weight=0.0, disc_weight=0.5, disc_start=2),
        train=TrainConfig(batch_size=16, lr=1e-3, warmup_steps=2, max_steps=4, sample_every=4, checkpoint_every=2,
                          log_every=2),
    )


