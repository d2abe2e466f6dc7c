"""Cascade presets (Imagen, Saharia et al. 2022; CDM, Ho et al. 2021): a 32 px text-to-image base
model and a 32 -> 64 text-conditioned super-resolution stage on ``shapes``, the single-stage 64 px
model they are compared with at equal training time, and a 16 -> 64 upsampler of real photo crops.

The three shapes models share one U-Net body (width 64, multipliers (1, 2, 2), one ResBlock per level,
self- and cross-attention at 8x8 and 4x4 feature maps): the base folds 32 px into 2x2 patches, the
64 px models into 4x4 patches, so that every one of them runs its levels at 16, 8 and 4 and a
training step costs about the same in each (README, Cascaded super-resolution).
"""

from __future__ import annotations

from latentdiff.data import DataConfig
from latentdiff.objectives.superres import SuperResConfig
from latentdiff.presets.configs import RunConfig
from latentdiff.presets.diffusion import fmnist_t2i, tiny_t2i


def shapes64_base() -> RunConfig:
    """The cascade's base: text-to-image at 32 px on shapes drawn at 64 px and downsampled (antialiased),
    the distribution its upsampler's inputs come from."""
    base = fmnist_t2i()
    return base.replace(
        description="cascade base: text-to-image on shapes at 32 px (downsampled from 64 px), pixel space, "
                    "MiniLM + cross-attention, CFG; 20 min on 2 CPU cores",
        data=DataConfig(name="shapes", image_size=32, channels=3, source_size=64),
        model=base.model.replace(in_channels=3, attention_resolutions=(8, 4)),
        train=base.train.replace(max_minutes=20.0, sample_every=500),
        sample=base.sample.replace(guidance=2.0, n_grid=100),
    )


def shapes64_single() -> RunConfig:
    """The single-stage comparison: the base's U-Net at 64 px (4x4 patches), trained as long as the
    cascade's two stages together."""
    base = shapes64_base()
    return base.replace(
        description="single-stage text-to-image on shapes at 64 px (the cascade's U-Net, 4x4 patches); "
                    "40 min on 2 CPU cores: as long as shapes64-base + shapes64-sr together",
        data=DataConfig(name="shapes", image_size=64, channels=3),
        model=base.model.replace(image_size=64, patch_size=4),
        train=base.train.replace(max_minutes=40.0),
    )


def shapes64_sr() -> RunConfig:
    """The cascade's upsampler, 32 -> 64: a U-Net of the same cost per step as the single model's,
    but at width 32 on 2x2 patches (its finest level sees 32x32, where the detail to add lives),
    with the low-res image on extra input channels, text-conditioned as Imagen's are, trained with
    noise-conditioning augmentation at levels U[0, 0.5]. Plain v-prediction MSE: min-SNR weighting
    starves the high-noise steps, where the low-res input is all the model has to go on (measured:
    after 1039 steps with min-SNR-5 its x0 prediction from pure noise was 17 dB PSNR, far below the
    bicubic upsample's 31 dB). Samples with few steps and no guidance."""
    base = shapes64_single()
    return base.replace(
        description="cascade upsampler 32 -> 64 on shapes (text-conditioned, noise-conditioning augmentation); "
                    "20 min on 2 CPU cores",
        model=base.model.replace(low_res_channels=3, channels=32, patch_size=2, attention_resolutions=(8,)),
        diffusion=base.diffusion.replace(min_snr_gamma=None),
        superres=SuperResConfig(factor=2, augment="noise", max_aug_level=0.5, aug_level=0.05),  # the sweep's best
        train=base.train.replace(max_minutes=20.0),
        sample=base.sample.replace(steps=6, guidance=1.0, n_grid=32),
    )


def photo_sr4() -> RunConfig:
    """16 -> 64 upsampler of real photo crops (no text): the shapes upsampler's U-Net without text."""
    base = shapes64_sr()
    return base.replace(
        description="16 -> 64 upsampler of scikit-image photo crops (unconditional, noise-conditioning "
                    "augmentation); 25 min on 2 CPU cores",
        text=None,
        data=DataConfig(name="photos", image_size=64, channels=3),
        model=base.model.replace(num_heads=1, head_dim=None, context_dim=0, pooled_dim=0),
        diffusion=base.diffusion.replace(cond_drop_prob=0.0),
        superres=SuperResConfig(factor=4, augment="noise", max_aug_level=0.5, aug_level=0.0),
        train=base.train.replace(max_minutes=25.0),
        sample=base.sample.replace(steps=10, threshold="static"),
    )


def tiny_sr() -> RunConfig:
    """For tests: a 32 -> 64 text-conditioned upsampler with a few thousand parameters."""
    base = tiny_t2i()
    return base.replace(
        description="tiny 32 -> 64 text-conditioned upsampler on 64 shapes images, for tests",
        data=base.data.replace(image_size=64),
        model=base.model.replace(image_size=64, patch_size=2, low_res_channels=3, attention_resolutions=(16,)),
        superres=SuperResConfig(factor=2),
        sample=base.sample.replace(n_grid=8),
    )
