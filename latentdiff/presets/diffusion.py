"""Diffusion presets: the Fashion-MNIST DDPMs (the demo, Ho et al. as stated, Improved DDPM), latent
DDPMs and the Imagen-style text-to-image models, with their tiny test versions."""

from __future__ import annotations

from latentdiff.conditioning.text import TextConfig
from latentdiff.data import DataConfig
from latentdiff.nn.unet import UNetConfig
from latentdiff.objectives.diffusion import DiffusionConfig
from latentdiff.presets.configs import RunConfig, SampleConfig
from latentdiff.training.train_config import TrainConfig


def fmnist_ddpm() -> RunConfig:
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
                          max_minutes=12.0, ema_decay=0.995, mixed_precision="auto", sample_every=500,
                          checkpoint_every=250, log_every=25),
        sample=SampleConfig(sampler="dpmpp_2m", steps=20, spacing="karras", guidance=2.0),
    )


def fmnist_ddpm_paper() -> RunConfig:
    """Ho et al. 2020 as stated: eps target, plain MSE (Algorithm 1), linear betas, 1000 ancestral steps."""
    return RunConfig(
        description="DDPM exactly as Ho et al. 2020 (eps, L_simple, linear betas), unconditional Fashion-MNIST",
        model=UNetConfig(channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(16,),
                         dropout=0.1, num_classes=0),
        diffusion=DiffusionConfig(schedule="linear", parameterisation="eps"),
        train=TrainConfig(batch_size=128, lr=2e-4, warmup_steps=5000, ema_decay=0.9999, max_steps=800_000),
        sample=SampleConfig(sampler="ddpm", steps=1000, spacing="leading"),
    )


def fmnist_iddpm() -> RunConfig:
    """Improved DDPM: cosine schedule, learned variance with the hybrid loss."""
    base = fmnist_ddpm()
    return base.replace(
        description="Improved DDPM (cosine schedule, learned variance, hybrid loss), class-conditional",
        diffusion=DiffusionConfig(schedule="cosine", parameterisation="eps", learned_variance=True,
                                  cond_drop_prob=0.1),
        sample=base.sample.replace(sampler="ddpm", steps=100, spacing="trailing"),
    )


def tiny() -> RunConfig:
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


def fmnist_ldm() -> RunConfig:
    """The demo U-Net's width on the KL-VAE's 8x8x4 latents (needs ``runs/fmnist-vae`` first)."""
    base = fmnist_ddpm()
    return base.replace(
        description="class-conditional latent DDPM on the fmnist-vae latents (train fmnist-vae into runs/fmnist-vae first)",
        autoencoder="runs/fmnist-vae/checkpoint",
        model=base.model.replace(image_size=8, in_channels=4, patch_size=1, attention_resolutions=(4,)),
    )


def tiny_ldm() -> RunConfig:
    base = tiny()
    return base.replace(description="tiny latent DDPM on the tiny-vae latents, for tests",
                        autoencoder="runs/tiny-vae/checkpoint",
                        model=base.model.replace(image_size=16, in_channels=2))


def shapes_t2i() -> RunConfig:
    """Imagen-style text-to-image on the shapes-vae latents: MiniLM token states through
    cross-attention at 8x8 and 4x4, the pooled embedding added to the time embedding, 10% of
    captions dropped for classifier-free guidance."""
    base = fmnist_ldm()
    return base.replace(
        description="text-to-image on shapes (latent, MiniLM + cross-attention, CFG; train shapes-vae into "
                    "runs/shapes-vae first; 30 min on 2 CPU cores)",
        autoencoder="runs/shapes-vae/checkpoint",
        text=TextConfig(max_length=16),
        data=DataConfig(name="shapes", image_size=32, channels=3),
        model=base.model.replace(num_classes=0, attention_resolutions=(8, 4), num_heads=None, head_dim=32,
                                 context_dim=384, pooled_dim=384),
        train=base.train.replace(max_minutes=30.0),
        sample=base.sample.replace(guidance=2.0, n_grid=100),  # the best of 1..10 (benchmarks/guidance_sweep.py)
    )


def shapes_t2i_pixel() -> RunConfig:
    """Imagen-style text-to-image on shapes in pixel space at 32 px (the cascade base's recipe,
    ``presets.cascade.shapes64_base``, on images drawn at 32 px): the model unCLIP's decoder is
    compared with at equal training time (README, unCLIP). Pixel space because the shapes-vae's
    reconstructions read back only 93.8% right, which caps every latent model's adherence."""
    base = fmnist_t2i()
    return base.replace(
        description="text-to-image on shapes in pixel space (32 px, MiniLM + cross-attention, CFG, dynamic "
                    "thresholding); 30 min on 2 CPU cores",
        data=DataConfig(name="shapes", image_size=32, channels=3),
        model=base.model.replace(in_channels=3, attention_resolutions=(8, 4)),
        train=base.train.replace(max_minutes=30.0, sample_every=1000),
        sample=base.sample.replace(guidance=2.0, n_grid=100),
    )


def shapes_t2i_flow() -> RunConfig:
    """``shapes-t2i-pixel``'s U-Net trained by rectified flow (logit-normal t, no min-SNR weighting),
    with fixed 2D sine-cosine positions after conv_in: the best design of ``benchmarks/backbones.py``
    (README, transformer denoisers). At 570 steps positions took the held-out single-object rate
    from 0.150 to 0.642 (benchmarks/results/shapes_t2i_flow_{nopos,pos}_adherence_w2.json)."""
    base = shapes_t2i_pixel()
    return base.replace(
        description="text-to-image on shapes in pixel space by rectified flow (32 px U-Net with 2D positions, "
                    "MiniLM + cross-attention, CFG); 30 min on 2 CPU cores",
        model=base.model.replace(position_embedding=True),
        diffusion=DiffusionConfig(parameterisation="flow", cond_drop_prob=base.diffusion.cond_drop_prob),
    )


def fmnist_t2i() -> RunConfig:
    """The demo's pixel U-Net conditioned on Fashion-MNIST captions from class names (templates and
    synonyms) instead of labels; dynamic thresholding at sampling (Imagen, pixel space)."""
    base = fmnist_ddpm()
    return base.replace(
        description="text-to-image on Fashion-MNIST captions (pixel space, MiniLM + cross-attention, CFG, "
                    "dynamic thresholding; ~12 min on 2 CPU cores)",
        text=TextConfig(max_length=16),
        model=base.model.replace(num_classes=0, num_heads=None, head_dim=32, context_dim=384, pooled_dim=384),
        sample=base.sample.replace(guidance=3.0, threshold="dynamic"),
    )


def tiny_t2i() -> RunConfig:
    base = tiny()
    return base.replace(description="tiny pixel text-to-image on 64 shapes images, for tests",
                        text=TextConfig(max_length=16), data=DataConfig(name="shapes", channels=3, n=64),
                        model=base.model.replace(in_channels=3, num_classes=0, context_dim=384, pooled_dim=384),
                        sample=base.sample.replace(threshold="dynamic"))


