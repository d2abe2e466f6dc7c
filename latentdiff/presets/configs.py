"""The run config classes every preset is made of: what a training run and its sampling need.

A diffusion run is a :class:`RunConfig`; autoencoders, ControlNets and DMD students have their own
classes, told apart in a checkpoint's config.json by its ``task`` (``run_config_from_dict``).
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
from latentdiff.nn.transformer import TransformerConfig
from latentdiff.nn.unet import UNetConfig
from latentdiff.objectives.diffusion import DiffusionConfig
from latentdiff.objectives.dmd import DMDConfig
from latentdiff.objectives.superres import SuperResConfig
from latentdiff.objectives.unclip import UnCLIPConfig
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
    (the U-Net's ``context_dim`` and ``pooled_dim`` are its width); None without text. ``superres``: a
    super-resolution stage of a cascade (``model.low_res_channels`` = ``model.in_channels``; pixel
    space): its low-res input is the image downsampled by ``superres.factor``; None otherwise.
    ``unclip``: an unCLIP decoder, conditioned on a CLIP model's image embeddings
    (``model.image_embed_dim`` = its embedding width); None otherwise. ``transformer``: the backbone
    is a DiT or MMDiT of these sizes, and ``model`` gives only its interface (image size, channels,
    classes, text widths); None: the U-Net of ``model``."""

    description: str = ""         # one line shown by `latentdiff presets`
    autoencoder: str | None = None  # autoencoder checkpoint for latent diffusion; None: pixel space
    text: TextConfig | None = None  # the frozen text encoder; None: no text conditioning
    data: DataConfig = DataConfig()
    model: UNetConfig = UNetConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    superres: SuperResConfig | None = None  # a cascade's super-resolution stage; None: not one
    unclip: UnCLIPConfig | None = None  # an unCLIP decoder's CLIP model; None: not one
    transformer: TransformerConfig | None = None  # a DiT / MMDiT backbone (``model``: its interface); None: U-Net

    def __post_init__(self):
        net, sr = self.model, self.superres
        if self.transformer is not None:
            self.transformer.check_interface(net)
        if sr is None and net.low_res_channels:
            raise ValueError(f"model.low_res_channels must be 0 without a superres section (got {net.low_res_channels}: "
                             "a super-resolution U-Net; set superres too)")
        if sr is not None:
            if net.low_res_channels != net.in_channels:
                raise ValueError(f"model.low_res_channels must equal model.in_channels ({net.in_channels}) in a "
                                 f"super-resolution run, got {net.low_res_channels}")
            if self.autoencoder is not None:
                raise ValueError("autoencoder must be null in a super-resolution run (the stage works in pixel space)")
            if net.image_size % sr.factor:
                raise ValueError(f"model.image_size must be divisible by superres.factor {sr.factor}, got {net.image_size}")
        if (self.unclip is None) != (net.image_embed_dim == 0):
            raise ValueError("an unCLIP decoder must have both an unclip section (its CLIP checkpoint) and "
                             f"model.image_embed_dim > 0; got unclip={'set' if self.unclip else 'null'}, "
                             f"model.image_embed_dim={net.image_embed_dim}")


def is_unclip_decoder_config(config: dict) -> bool:
    """Whether a diffusion run's config dict is an unCLIP decoder's."""
    return config.get("unclip") is not None


def is_superres_config(config: dict) -> bool:
    """Whether a diffusion run's config dict is a super-resolution stage's."""
    return config.get("superres") is not None


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


