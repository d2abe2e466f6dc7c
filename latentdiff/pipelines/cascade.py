"""Cascaded generation (Imagen, Saharia et al. 2022; DALL·E 2; CDM, Ho et al. 2021): a base model,
then super-resolution stages, each with its own sampler, steps, guidance and aug level. No maths
here: the noise-conditioning augmentation is ``objectives.superres.augment_at_level``.

A stage's low-res input is the previous stage's output (a latent base model's decoded image),
noise-augmented at the stage's ``aug_level`` with noise of its own seed, so that a seed gives the
same cascade output on CPU and GPU and changing one stage's level leaves the base's sample alone.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from latentdiff.io.checkpoint import read_config
from latentdiff.objectives.superres import augment_at_level
from latentdiff.pipelines.conditions import Conditioning, conditions, guided
from latentdiff.pipelines.diffusion import generate, load_denoiser, samples_in_bf16, text_encoder_for
from latentdiff.precond import Denoiser
from latentdiff.presets import RunConfig, is_superres_config
from latentdiff.sampling import get_sampler, prior_noise
from latentdiff.sampling.tiled import TiledSuperRes, tile_starts
from latentdiff.schedules import sigma_grid


@dataclasses.dataclass
class Stage:
    """One super-resolution stage and how it samples; None fields take the checkpoint's defaults."""

    denoiser: Denoiser
    cfg: RunConfig
    sampler: str | None = None
    steps: int | None = None
    spacing: str | None = None
    guidance: float | None = None
    aug_level: float | None = None
    name: str = "upscaler"

    @property
    def input_size(self) -> int:
        return self.cfg.model.image_size // self.cfg.superres.factor

    @property
    def output_size(self) -> int:
        return self.cfg.model.image_size

    @property
    def level(self) -> float:
        """The aug level this stage samples at: its own, else the checkpoint's ``superres.aug_level``."""
        return self.cfg.superres.aug_level if self.aug_level is None else self.aug_level

    def sampling(self) -> dict:
        """generate()'s sampler, steps, spacing, guidance, threshold and percentile: the stage's, else the
        checkpoint's defaults."""
        s = self.cfg.sample
        return dict(sampler=self.sampler or s.sampler, steps=self.steps or s.steps, spacing=self.spacing or s.spacing,
                    guidance=s.guidance if self.guidance is None else self.guidance, threshold=s.threshold,
                    percentile=s.percentile)


def load_upscaler(ckpt: str | Path, use_ema: bool = True, device: str | torch.device = "cpu",
                  **sampling) -> Stage:
    """A super-resolution checkpoint -> its :class:`Stage` (``sampling``: the Stage's sampler, steps,
    spacing, guidance, aug_level). A checkpoint that is not an upscaler is refused by name."""
    if not is_superres_config(read_config(ckpt)):
        raise ValueError(f"{ckpt} is not a super-resolution checkpoint (its config has no superres section)")
    denoiser, cfg = load_denoiser(ckpt, use_ema, device)
    return Stage(denoiser, cfg, name=str(ckpt), **sampling)


def check_chain(base_size: int, base_channels: int, stages: list[Stage], base_name: str = "the base model") -> None:
    """Refuse a cascade whose sizes or channels do not chain, naming both sides of the mismatch."""
    size, channels, name = base_size, base_channels, base_name
    for stage in stages:
        if stage.input_size != size:
            raise ValueError(f"{stage.name} upscales {stage.input_size}x{stage.input_size} images but {name} "
                             f"gives {size}x{size}")
        if stage.cfg.model.in_channels != channels:
            raise ValueError(f"{stage.name} takes {stage.cfg.model.in_channels}-channel images but {name} gives "
                             f"{channels}-channel ones")
        size, channels, name = stage.output_size, stage.cfg.model.in_channels, stage.name


@torch.no_grad()
def upscale(stage: Stage, low_res: torch.Tensor, prompts: list[str] | None = None, *, seed: int = 0,
            negative_prompt: str = "", text_encoder=None, progress: bool = False, batch_size: int = 250) -> torch.Tensor:
    """Upscale (n, C, h, w) images in [-1, 1] with one stage -> (n, C, S, S) in [-1, 1].

    ``prompts`` (n strings) for a text-conditioned stage (None: the empty prompt, unconditional);
    guidance (the stage's) is on the text, both branches seeing the same low-res input. The sampled
    noise comes from ``seed``, the augmentation noise from ``seed + 1``."""
    cfg = stage.cfg
    n, channels, h, w = low_res.shape
    if channels != cfg.model.in_channels:
        raise ValueError(f"{stage.name} takes {cfg.model.in_channels}-channel images, got {channels} channels")
    if (h, w) != (stage.input_size, stage.input_size):
        raise ValueError(f"{stage.name} upscales {stage.input_size}x{stage.input_size} images, got {h}x{w}")
    if cfg.text is not None:
        prompts = [""] * n if prompts is None else list(prompts)
        text_encoder = text_encoder or text_encoder_for(cfg)
    else:
        prompts = None
    return generate(stage.denoiser, n,
                    Conditioning(prompts=prompts, negative_prompt=negative_prompt, text_encoder=text_encoder,
                                 shared=augment_at_level(low_res, stage.level, seed + 1)),
                    seed=seed, batch_size=batch_size, progress=progress, bf16=samples_in_bf16(cfg),
                    **stage.sampling())


@torch.no_grad()
def run_cascade(base: Denoiser, base_cfg: RunConfig, stages: list[Stage], n: int, *, prompts: list[str] | None = None,
                class_labels: torch.Tensor | None = None, autoencoder: nn.Module | None = None, seed: int = 0,
                base_sampling: dict | None = None, progress: bool = False,
                batch_size: int = 250) -> list[torch.Tensor]:
    """Sample n images from the base model (``base_sampling``: generate()'s sampler, steps, spacing,
    guidance, threshold, percentile; default the base's), then pass them through every stage.
    Returns every stage's images, the base's first: [(n, C, S_0, S_0), (n, C, S_1, S_1), ...]."""
    s = base_cfg.sample
    options = dict(sampler=s.sampler, steps=s.steps, spacing=s.spacing, guidance=s.guidance, threshold=s.threshold,
                   percentile=s.percentile)
    options.update({k: v for k, v in (base_sampling or {}).items() if v is not None})
    base_size = base_cfg.data.image_size if base_cfg.autoencoder else base_cfg.model.image_size
    base_channels = base_cfg.data.channels if base_cfg.autoencoder else base_cfg.model.in_channels
    check_chain(base_size, base_channels, stages)
    text_encoder = text_encoder_for(base_cfg) if base_cfg.text is not None else None
    images = generate(base, n, Conditioning(class_labels=class_labels, prompts=prompts, text_encoder=text_encoder),
                      seed=seed, progress=progress, bf16=samples_in_bf16(base_cfg), autoencoder=autoencoder,
                      batch_size=batch_size, **options)
    outputs = [images]
    for k, stage in enumerate(stages):
        stage_prompts = prompts if stage.cfg.text is not None else None
        shared_encoder = text_encoder if stage.cfg.text == base_cfg.text else None
        images = upscale(stage, images, stage_prompts, seed=seed + 1000 * (k + 1), text_encoder=shared_encoder,
                         progress=progress, batch_size=batch_size)
        outputs.append(images)
    return outputs


@torch.no_grad()
def upscale_image(stage: Stage, image: torch.Tensor, prompt: str | None = None, *, n: int = 1, seed: int = 0,
                  negative_prompt: str = "", progress: bool = False) -> tuple[torch.Tensor, str]:
    """Upscale a user's image (1, C, h, w) in [-1, 1] of any size -> ((n, C, h f, w f), a note saying what
    was done). An image smaller than the stage's input is padded (edge pixels repeated) and the output
    cropped back; a larger one is tiled (``sampling.tiled.TiledSuperRes``: tiles of the training size,
    overlapping by half, blended at every step). ``n`` samples from seeds' noise; the same seed rules
    as :func:`upscale`, which this equals for an image of exactly the input size."""
    cfg, o = stage.cfg, stage.sampling()
    t, f = stage.input_size, cfg.superres.factor
    _, channels, h, w = image.shape
    if channels != cfg.model.in_channels:
        raise ValueError(f"{stage.name} takes {cfg.model.in_channels}-channel images, got {channels} channels")
    low = F.pad(image, (0, max(0, t - w), 0, max(0, t - h)), mode="replicate").expand(n, -1, -1, -1)
    tiles = len(tile_starts(low.shape[-2], t, max(1, t // 2))) * len(tile_starts(low.shape[-1], t, max(1, t // 2)))
    note = (f"{h}x{w} -> {h * f}x{w * f}" + (f"; padded to {low.shape[-2]}x{low.shape[-1]} (the upscaler's input "
            f"is {t}x{t}), output cropped back" if (h, w) != low.shape[-2:] else "")
            + (f"; tiled into {tiles} tiles of {t}x{t} overlapping by half, blended at every step (MultiDiffusion)"
               if tiles > 1 else ""))
    prompts = [prompt or ""] * n if cfg.text is not None else None
    cond, uncond = conditions(stage.denoiser, Conditioning(
        prompts=prompts, negative_prompt=negative_prompt, text_encoder=text_encoder_for(cfg) if prompts else None,
        shared=augment_at_level(low, stage.level, seed + 1)))
    model = guided(TiledSuperRes(stage.denoiser, t, f), cond, uncond, o["guidance"], o["threshold"], o["percentile"])
    sigmas = sigma_grid(stage.denoiser.schedule, o["steps"], o["spacing"])
    generator = torch.Generator().manual_seed(seed)
    x = prior_noise((n, channels, low.shape[-2] * f, low.shape[-1] * f), float(sigmas[0]), generator)
    device = next(stage.denoiser.net.parameters()).device
    with tqdm(total=len(sigmas) - 1, desc=f"upscale {n} x {tiles} tile(s)", disable=not progress) as bar, \
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=samples_in_bf16(cfg)):
        x = get_sampler(o["sampler"])(model, x.to(device), sigmas, cond=cond, generator=generator,
                                     callback=lambda i, *_: bar.update(i + 1 - bar.n))
    return x[..., :h * f, :w * f].float().cpu().clamp(-1, 1), note
