"""Named, documented run presets: a ``RunConfig`` is everything a training run and its sampling need.

``latentdiff presets`` lists them; ``latentdiff train --preset NAME --set train.lr=1e-3`` overrides
any field. The config is saved with every checkpoint, so a checkpoint rebuilds its own model.
"""

from __future__ import annotations

import dataclasses

from latentdiff.autoencoders.losses import AutoencoderLossConfig
from latentdiff.autoencoders.models import AutoencoderConfig
from latentdiff.conditioning.text import TextConfig
from latentdiff.config import Config, document
from latentdiff.data import DataConfig
from latentdiff.data.control import ControlConfig
from latentdiff.nn.controlnet import ControlNetConfig
from latentdiff.nn.unet import UNetConfig
from latentdiff.objectives.diffusion import DiffusionConfig
from latentdiff.objectives.dmd import DMDConfig
from latentdiff.training.train_config import TrainConfig

# descriptions for `latentdiff config` of fields whose classes carry no comment on them
document(ControlConfig, kind="the control map: edges (Canny) | mask (chroma silhouette)",
         sigma="Canny's Gaussian sigma", low="Canny's low hysteresis threshold (gradients of images in [0, 1])",
         high="Canny's high hysteresis threshold", chroma="the mask's chroma threshold")
document(ControlNetConfig, control_channels="channels of the control image it reads")

_THRESHOLDS = ("none", "static", "dynamic")


def check_sampling(owner: str, sampler: str, steps: int, spacing: str) -> None:
    """Refuse an unknown sampler or spacing, or steps < 1, when a config is made (so that ``train
    --set sample.sampler=...`` fails before it writes anything, not at the first sample grid)."""
    from latentdiff.sampling import SAMPLERS
    from latentdiff.schedules import SPACINGS

    if sampler not in SAMPLERS:
        raise ValueError(f"{owner}.sampler: unknown sampler {sampler!r}; valid: {', '.join(sorted(SAMPLERS))}")
    if spacing not in (*SPACINGS, "fitted"):
        raise ValueError(f"{owner}.spacing: unknown spacing {spacing!r}; valid: {', '.join(SPACINGS)}, fitted")
    if steps < 1:
        raise ValueError(f"{owner}.steps must be at least 1, got {steps}")


@dataclasses.dataclass(frozen=True)
class SampleConfig(Config):
    """Default sampling for a run: sampler name, step count, sigma spacing, guidance scale, and the
    clipping of x0 predictions (``none``; ``static``: to [-1, 1]; ``dynamic``: Imagen's dynamic
    thresholding at ``percentile``; both for pixel-space models only)."""

    sampler: str = "dpmpp_2m"     # sampler name (`latentdiff samplers` lists them)
    steps: int = 20               # sampling steps
    spacing: str = "karras"       # sigma spacing (`latentdiff samplers` lists them)
    guidance: float = 1.0         # classifier-free guidance scale (1 = conditional model)
    threshold: str = "none"       # none | static | dynamic
    percentile: float = 0.995     # dynamic thresholding's p
    use_ema: bool = True          # sample with the EMA weights
    n_grid: int = 100             # images in the periodic training grids

    def __post_init__(self):
        check_sampling("sample", self.sampler, self.steps, self.spacing)
        if self.threshold not in _THRESHOLDS:
            raise ValueError(f"sample.threshold: expected one of {', '.join(_THRESHOLDS)}, got {self.threshold!r}")


@dataclasses.dataclass(frozen=True)
class RunConfig(Config):
    """A diffusion run. ``autoencoder``: an autoencoder checkpoint directory for latent diffusion
    (the U-Net then works on its latents: ``model.in_channels, model.image_size`` must match its
    latent shape); None for pixel space. ``text``: the frozen text encoder of a text-to-image run
    (the U-Net's ``context_dim`` and ``pooled_dim`` are its width); None without text."""

    description: str = ""         # one line shown by `latentdiff presets`
    autoencoder: str | None = None  # autoencoder checkpoint for latent diffusion; None: pixel space
    text: TextConfig | None = None  # the frozen text encoder; None: no text conditioning
    data: DataConfig = DataConfig()
    model: UNetConfig = UNetConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()


@dataclasses.dataclass(frozen=True)
class ControlNetRunConfig(Config):
    """A ControlNet run on a frozen text-to-image (or class-conditional) base checkpoint ``base``:
    its data, autoencoder, text encoder and diffusion settings are the base's. ``prompt_drop_prob``:
    the share of training captions replaced by the empty prompt (the paper uses 50%), so that the
    ControlNet also learns to follow the control alone. ``base_model`` is filled in at training time
    with the base U-Net's config, against which a base is checked when the ControlNet is loaded."""

    task: str = "controlnet"      # the checkpoint kind (fixed)
    description: str = ""         # one line shown by `latentdiff presets`
    base: str = ""                # the frozen base model's checkpoint
    control: ControlConfig = ControlConfig()
    controlnet: ControlNetConfig = ControlNetConfig()
    prompt_drop_prob: float = 0.5  # share of training captions replaced by the empty prompt
    base_model: UNetConfig | None = None  # filled in at training time: the base U-Net's config
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()


def is_controlnet_config(config: dict) -> bool:
    return config.get("task") == "controlnet"


@dataclasses.dataclass(frozen=True)
class PairsConfig(Config):
    """DMD's regression pairs: ``n`` (noise, teacher sample) pairs from the teacher's deterministic
    ``sampler`` (with its guidance), drawn once into the run folder; n = 0: none (DMD2)."""

    n: int = 1000                 # (noise, teacher sample) pairs; 0: none
    sampler: str = "ddim"         # the teacher's deterministic sampler
    steps: int = 20               # the teacher's sampling steps
    spacing: str = "trailing"     # the teacher's sigma spacing
    seed: int = 1  # evaluations use seed 0: the pairs' noise is other noise

    def __post_init__(self):
        check_sampling("pairs", self.sampler, self.steps, self.spacing)


@dataclasses.dataclass(frozen=True)
class DMDRunConfig(Config):
    """A DMD / DMD2 distillation of the diffusion checkpoint ``teacher`` into a few-step generator.
    ``parameterisation`` and ``image_size`` say what teacher the settings are for (checked at the
    start). ``teacher_config`` is filled in at training time with the teacher's RunConfig, which
    rebuilds the student's network when it is loaded."""

    task: str = "dmd"             # the checkpoint kind (fixed)
    description: str = ""         # one line shown by `latentdiff presets`
    teacher: str = ""             # the teacher's diffusion checkpoint
    parameterisation: str = "v"   # the teacher's parameterisation these settings are for (checked)
    image_size: int = 32          # the teacher's image size these settings are for (checked)
    dmd: DMDConfig = DMDConfig()
    pairs: PairsConfig = PairsConfig()
    teacher_config: RunConfig | None = None  # filled in at training time: the teacher's RunConfig
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig(sampler="consistency", steps=1, spacing="trailing", guidance=1.0)


def is_dmd_config(config: dict) -> bool:
    return config.get("task") == "dmd"


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


@dataclasses.dataclass(frozen=True)
class AutoencoderRunConfig(Config):
    """An autoencoder run: network, loss and training loop (``task`` tells the checkpoint kinds apart)."""

    task: str = "autoencoder"     # the checkpoint kind (fixed)
    description: str = ""         # one line shown by `latentdiff presets`
    data: DataConfig = DataConfig()
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    loss: AutoencoderLossConfig = AutoencoderLossConfig()
    train: TrainConfig = TrainConfig()


def is_autoencoder_config(config: dict) -> bool:
    return config.get("task") == "autoencoder"


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


def _fmnist_vae() -> AutoencoderRunConfig:
    """KL-VAE f=4, 4 latent channels (Rombach et al. 2021's KL-f4 shape): 32x32x1 -> 8x8x4."""
    return AutoencoderRunConfig(
        description="KL-regularised autoencoder f=4, 8x8x4 latents, for Fashion-MNIST (~15 min on 2 CPU cores)",
        autoencoder=AutoencoderConfig(kind="kl", channels=32, channel_mult=(1, 2, 2), num_res_blocks=1),
        loss=AutoencoderLossConfig(reconstruction="l1", perceptual_weight=1.0, perceptual_size=32, kl_weight=1e-6),
        train=TrainConfig(batch_size=32, lr=1e-3, warmup_steps=100, grad_clip=1.0, max_steps=100_000,
                          max_minutes=15.0, ema_decay=0.999, mixed_precision="no", sample_every=500,
                          checkpoint_every=250, log_every=25),
    )


def _fmnist_vqvae() -> AutoencoderRunConfig:
    """VQ-VAE f=4, 4-dimensional codes, 512 of them, EMA codebook with dead-code restarts."""
    base = _fmnist_vae()
    return base.replace(
        description="VQ-regularised autoencoder f=4, 8x8 codes of 512, for Fashion-MNIST (~15 min on 2 CPU cores)",
        autoencoder=base.autoencoder.replace(kind="vq", num_codes=512),
    )


def _shapes_vae() -> AutoencoderRunConfig:
    """KL-VAE f=4 for the 32x32 RGB ``shapes`` images: 32x32x3 -> 8x8x4."""
    base = _fmnist_vae()
    return base.replace(
        description="KL-regularised autoencoder f=4, 8x8x4 latents, for shapes (~21 min on 2 CPU cores)",
        data=DataConfig(name="shapes", image_size=32, channels=3),
        autoencoder=base.autoencoder.replace(in_channels=3),
        train=base.train.replace(max_minutes=21.0),
    )


def _tiny_vae() -> AutoencoderRunConfig:
    return AutoencoderRunConfig(
        description="tiny KL autoencoder for tests (seconds on CPU)",
        autoencoder=AutoencoderConfig(kind="kl", channels=8, channel_mult=(1, 2), norm_groups=4, latent_channels=2),
        loss=AutoencoderLossConfig(perceptual_weight=0.0, disc_weight=0.5, disc_start=2),
        train=TrainConfig(batch_size=16, lr=1e-3, warmup_steps=2, max_steps=4, sample_every=4, checkpoint_every=2,
                          log_every=2),
    )


def _fmnist_ldm() -> RunConfig:
    """The demo U-Net's width on the KL-VAE's 8x8x4 latents (needs ``runs/fmnist-vae`` first)."""
    base = _fmnist_ddpm()
    return base.replace(
        description="class-conditional latent DDPM on the fmnist-vae latents (train fmnist-vae into runs/fmnist-vae first)",
        autoencoder="runs/fmnist-vae/checkpoint",
        model=base.model.replace(image_size=8, in_channels=4, patch_size=1, attention_resolutions=(4,)),
    )


def _tiny_ldm() -> RunConfig:
    base = _tiny()
    return base.replace(description="tiny latent DDPM on the tiny-vae latents, for tests",
                        autoencoder="runs/tiny-vae/checkpoint",
                        model=base.model.replace(image_size=16, in_channels=2))


def _shapes_t2i() -> RunConfig:
    """Imagen-style text-to-image on the shapes-vae latents: MiniLM token states through
    cross-attention at 8x8 and 4x4, the pooled embedding added to the time embedding, 10% of
    captions dropped for classifier-free guidance."""
    base = _fmnist_ldm()
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


def _fmnist_t2i() -> RunConfig:
    """The demo's pixel U-Net conditioned on Fashion-MNIST captions from class names (templates and
    synonyms) instead of labels; dynamic thresholding at sampling (Imagen, pixel space)."""
    base = _fmnist_ddpm()
    return base.replace(
        description="text-to-image on Fashion-MNIST captions (pixel space, MiniLM + cross-attention, CFG, "
                    "dynamic thresholding; ~12 min on 2 CPU cores)",
        text=TextConfig(max_length=16),
        model=base.model.replace(num_classes=0, num_heads=None, head_dim=32, context_dim=384, pooled_dim=384),
        sample=base.sample.replace(guidance=3.0, threshold="dynamic"),
    )


def _tiny_t2i() -> RunConfig:
    base = _tiny()
    return base.replace(description="tiny pixel text-to-image on 64 shapes images, for tests",
                        text=TextConfig(max_length=16), data=DataConfig(name="shapes", channels=3, n=64),
                        model=base.model.replace(in_channels=3, num_classes=0, context_dim=384, pooled_dim=384),
                        sample=base.sample.replace(threshold="dynamic"))


def _shapes_controlnet_edges() -> ControlNetRunConfig:
    """ControlNet on Canny edges of shapes, over the frozen shapes-t2i model (runs/shapes-t2i first)."""
    return ControlNetRunConfig(
        description="ControlNet on shapes Canny edges over the frozen shapes-t2i model (train shapes-t2i into "
                    "runs/shapes-t2i first; 30 min on 2 CPU cores)",
        base="runs/shapes-t2i/checkpoint",
        control=ControlConfig(kind="edges", sigma=1.0, low=0.3, high=0.6),
        controlnet=ControlNetConfig(control_channels=1, control_size=32, hint_channels=16),
        train=TrainConfig(batch_size=64, lr=5e-4, warmup_steps=50, grad_clip=1.0, max_steps=100_000,
                          max_minutes=30.0, ema_decay=0.995, mixed_precision="bf16", sample_every=250,
                          checkpoint_every=250, log_every=25),
        sample=SampleConfig(sampler="dpmpp_2m", steps=20, spacing="karras", guidance=2.0, n_grid=8),
    )


def _shapes_controlnet_mask() -> ControlNetRunConfig:
    """ControlNet on the objects' silhouettes (chroma mask) of shapes."""
    base = _shapes_controlnet_edges()
    return base.replace(description="ControlNet on shapes silhouette masks over the frozen shapes-t2i model "
                                    "(runs/shapes-t2i first; 30 min on 2 CPU cores)",
                        control=ControlConfig(kind="mask", chroma=0.25))


def _fmnist_controlnet_edges() -> ControlNetRunConfig:
    """ControlNet on Canny edges of Fashion-MNIST over the frozen fmnist-t2i model (pixel space)."""
    base = _shapes_controlnet_edges()
    return base.replace(description="ControlNet on Fashion-MNIST Canny edges over the frozen fmnist-t2i model "
                                    "(train fmnist-t2i into runs/fmnist-t2i first; 20 min on 2 CPU cores)",
                        base="runs/fmnist-t2i/checkpoint",
                        control=ControlConfig(kind="edges", sigma=1.5, low=0.1, high=0.3),
                        train=base.train.replace(max_minutes=20.0),
                        sample=base.sample.replace(guidance=3.0, threshold="dynamic"))


def _tiny_controlnet() -> ControlNetRunConfig:
    base = _shapes_controlnet_edges()
    return base.replace(description="tiny ControlNet over runs/tiny-t2i, for tests", base="runs/tiny-t2i/checkpoint",
                        controlnet=ControlNetConfig(control_channels=1, control_size=32, hint_channels=4),
                        train=_tiny().train, sample=_tiny().sample.replace(n_grid=4))


def _fmnist_dmd() -> DMDRunConfig:
    """DMD of the demo model (fmnist-ddpm, in demo_out/checkpoint; or --set teacher=PATH)."""
    return DMDRunConfig(
        description="DMD one-step student of the Fashion-MNIST demo model (demo_out/checkpoint; --set teacher=PATH): "
                    "distribution matching + regression on 1000 teacher pairs, 45 min on 2 CPU cores in all",
        teacher="demo_out/checkpoint",
        dmd=DMDConfig(guidance=2.0, regression_weight=0.25),
        pairs=PairsConfig(n=1000, sampler="ddim", steps=20, spacing="trailing"),
        train=TrainConfig(batch_size=32, lr=1e-4, warmup_steps=20, grad_clip=1.0, max_steps=100_000,
                          max_minutes=41.0, ema_decay=0.99, mixed_precision="bf16", sample_every=250,
                          checkpoint_every=100, log_every=10),
        sample=DMDRunConfig.sample.replace(n_grid=100),
    )


def _fmnist_dmd2() -> DMDRunConfig:
    """DMD2: no regression; 3 fake-score updates per generator update, GAN head, 4-step generator."""
    base = _fmnist_dmd()
    return base.replace(description="DMD2 4-step student of the Fashion-MNIST demo model (demo_out/checkpoint; "
                                    "--set teacher=PATH): 3 fake-score updates per generator update (the paper: 5, for "
                                    "far longer runs), GAN on the fake score, backward simulation; 45 min",
                        dmd=DMDConfig(guidance=2.0, regression_weight=0.0, fake_updates=3, gan_weight=3e-3,
                                      disc_weight=1e-2, student_steps=4),
                        pairs=PairsConfig(n=0), train=base.train.replace(max_minutes=45.0),
                        sample=base.sample.replace(steps=4))


def _tiny_dmd() -> DMDRunConfig:
    return _fmnist_dmd().replace(description="tiny DMD of runs/tiny, for tests", teacher="runs/tiny/checkpoint",
                                 pairs=PairsConfig(n=32, steps=2), dmd=DMDConfig(),
                                 train=_tiny().train.replace(batch_size=8, mixed_precision="no"),
                                 sample=DMDRunConfig.sample.replace(n_grid=20))


def _tiny_dmd2() -> DMDRunConfig:
    return _fmnist_dmd2().replace(description="tiny DMD2 of runs/tiny, for tests", teacher="runs/tiny/checkpoint",
                                  train=_tiny_dmd().train, sample=_tiny_dmd().sample.replace(steps=2),
                                  dmd=_fmnist_dmd2().dmd.replace(student_steps=2, fake_updates=2))


PRESETS = {
    "fmnist-ddpm": _fmnist_ddpm,
    "fmnist-vae": _fmnist_vae,
    "fmnist-vqvae": _fmnist_vqvae,
    "fmnist-ldm": _fmnist_ldm,
    "shapes-vae": _shapes_vae,
    "shapes-t2i": _shapes_t2i,
    "fmnist-t2i": _fmnist_t2i,
    "shapes-controlnet-edges": _shapes_controlnet_edges,
    "shapes-controlnet-mask": _shapes_controlnet_mask,
    "fmnist-controlnet-edges": _fmnist_controlnet_edges,
    "tiny-vae": _tiny_vae,
    "tiny-t2i": _tiny_t2i,
    "tiny-controlnet": _tiny_controlnet,
    "fmnist-dmd": _fmnist_dmd,
    "fmnist-dmd2": _fmnist_dmd2,
    "tiny-dmd": _tiny_dmd,
    "tiny-dmd2": _tiny_dmd2,
    "tiny-ldm": _tiny_ldm,
    "fmnist-ddpm-paper": _fmnist_ddpm_paper,
    "fmnist-iddpm": _fmnist_iddpm,
    "tiny": _tiny,
}


def get_preset(name: str) -> RunConfig | AutoencoderRunConfig | ControlNetRunConfig | DMDRunConfig:
    """The preset called ``name``; unknown names list the valid ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]()


def run_config_from_dict(config: dict) -> RunConfig | AutoencoderRunConfig | ControlNetRunConfig | DMDRunConfig:
    """A run's config dict (a checkpoint's or run folder's config.json) as its config class, by its ``task``."""
    kinds = ((is_autoencoder_config, AutoencoderRunConfig), (is_controlnet_config, ControlNetRunConfig),
             (is_dmd_config, DMDRunConfig))
    cls = next((cls for test, cls in kinds if test(config)), RunConfig)
    return cls.from_dict(config)


def describe_presets() -> list[tuple[str, str]]:
    return [(name, make().description) for name, make in PRESETS.items()]
