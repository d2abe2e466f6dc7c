"""Orchestration for (class-conditional) diffusion models: build, train, load, generate. No maths here."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from latentdiff.accel import prepare, training_memory_format
from latentdiff.conditioning import TextConditioned, TextEncoder, text_encoder, text_table
from latentdiff.conditioning.text_cache import BlendedText
from latentdiff.data import build_dataset, grid_prompts
from latentdiff.data.resolve import resolve_data
from latentdiff.io.checkpoint import load_checkpoint, read_config
from latentdiff.nn.superres import resample
from latentdiff.nn.unet import UNet
from latentdiff.objectives.blend import CaptionBlend
from latentdiff.objectives.flow import diffusion_loss
from latentdiff.objectives.superres import SuperResLoss, augment_at_level
from latentdiff.pipelines.autoencoder import autoencoder_for, latent_dataset
from latentdiff.pipelines.conditions import Conditioning, conditions, guided, windowed
from latentdiff.precond import Denoiser
from latentdiff.presets import RunConfig
from latentdiff.sampling import get_sampler, prior_noise
from latentdiff.sampling.fitted import FittedGrid, fit_sigmas
from latentdiff.schedules import DiscreteSchedule, FlowSchedule, sigma_grid
from latentdiff.training.start import seeded_run
from latentdiff.training.trainer import Trainer


def build_backbone(cfg: RunConfig) -> nn.Module:
    """The run's denoiser network: a U-Net (``model``), or the transformer of its ``transformer`` section
    (``nn.dit.DiT``, ``nn.mmdit.MMDiT``) with ``model`` as its interface."""
    if cfg.transformer is None:
        return UNet(cfg.model, learned_variance=cfg.diffusion.learned_variance)
    from latentdiff.nn.dit import DiT
    from latentdiff.nn.mmdit import MMDiT

    kind = {"dit": DiT, "mmdit": MMDiT}[cfg.transformer.kind]
    return kind(cfg.model, cfg.transformer, learned_variance=cfg.diffusion.learned_variance)


def schedule_of(cfg: RunConfig) -> DiscreteSchedule:
    """The run's schedule: its discrete VP one, or the flow path's for ``parameterisation=flow``."""
    if cfg.diffusion.parameterisation == "flow":
        return FlowSchedule(cfg.diffusion.timesteps)
    return DiscreteSchedule(cfg.diffusion.schedule, cfg.diffusion.timesteps)


def samples_in_bf16(cfg: RunConfig) -> bool:
    """Sample under bf16 autocast exactly when the run trained under it."""
    return cfg.train.mixed_precision == "bf16"


def make_denoiser(net: nn.Module, cfg: RunConfig) -> Denoiser:
    return Denoiser(net, schedule_of(cfg), cfg.diffusion.parameterisation, cfg.diffusion.learned_variance)


def load_denoiser(ckpt: str | Path, use_ema: bool = True, device: str | torch.device = "cpu",
                  compile: bool = False):
    """A checkpoint directory -> (Denoiser in eval mode, RunConfig); the network in the faster memory
    format for its sampling precision on ``device``, torch.compile'd if ``compile`` (``accel.prepare``)."""
    state = load_checkpoint(ckpt, trainer_state=False)
    cfg = parts_beside(RunConfig.from_dict(state.config), state.path)
    net = build_backbone(cfg)
    weights = state.ema_state if use_ema and state.ema_state is not None else state.model_state
    net.load_state_dict(weights)
    net = prepare(net.eval(), device, bf16=samples_in_bf16(cfg), compile=compile)
    return make_denoiser(net, cfg), cfg


def parts_beside(cfg: RunConfig, ckpt: str | Path) -> RunConfig:
    """The run config with its autoencoder and text-encoder paths resolved beside the checkpoint where
    they are relative and exist there (a converted checkpoint keeps its parts in sub-folders,
    ``interop.convert``); other paths stay as they are (relative to the working directory)."""
    def beside(path: str | None) -> str | None:
        if path is None or Path(path).is_absolute() or not (Path(ckpt) / path).exists():
            return path
        return str(Path(ckpt) / path)

    text = None if cfg.text is None else cfg.text.replace(encoder=beside(cfg.text.encoder))
    return cfg.replace(autoencoder=beside(cfg.autoencoder), text=text)


def load_model(ckpt: str | Path, use_ema: bool = True, device: str | torch.device = "cpu"):
    """A diffusion checkpoint -> (Denoiser, autoencoder (identity in pixel space), RunConfig).

    A DMD student's checkpoint gives the student, with the teacher's config and the student's sampling
    defaults (``pipelines.dmd.load_student``); a LoRA adapter's gives its base with the adapter on it
    (``pipelines.lora.load_model_with_adapters``). Raises ValueError naming both shapes when the
    autoencoder's latents do not fit the U-Net."""
    task = read_config(ckpt).get("task")
    if task == "dmd":
        from latentdiff.pipelines.dmd import load_student

        return load_student(ckpt, use_ema, device)[:3]
    if task == "lora":
        from latentdiff.pipelines.lora import load_model_with_adapters

        return load_model_with_adapters(ckpt, use_ema=use_ema, device=device)
    denoiser, cfg = load_denoiser(ckpt, use_ema, device)
    return denoiser, autoencoder_for(cfg, device), cfg


def class_grid_labels(num_classes: int, per_class: int) -> torch.Tensor:
    """(num_classes * per_class,) labels, one class per row of a grid with ``per_class`` columns."""
    return torch.arange(num_classes).repeat_interleave(per_class)


@torch.no_grad()
def fit_model_grid(denoiser: Denoiser, sampler: str, nfe: int, *, guidance: float = 1.0, n_pilot: int = 32,
                   reference_steps: int = 100, max_evals: int = 40, n_starts: int = 2,
                   seed: int = 10_000, progress: bool = False) -> FittedGrid:
    """An nfe-call sigma grid for ``sampler`` fitted to this model (``latentdiff.sampling.fitted``).

    The pilot: n_pilot images (balanced classes, this guidance) from noise of ``seed``, far from
    the seeds used for evaluation; its reference is DPM-Solver++(3M) on ``reference_steps`` logSNR
    steps. Starts from trailing, logsnr and karras; returns the FittedGrid (sigmas (nfe + 1,)).
    ``progress`` shows a bar over the search's pilot solves.
    """
    sched, net_cfg = denoiser.schedule, denoiser.net.cfg
    device = next(denoiser.net.parameters()).device
    g = torch.Generator().manual_seed(seed)
    x_T = prior_noise((n_pilot, net_cfg.in_channels, net_cfg.image_size, net_cfg.image_size), sched.sigma_max, g)
    labels = (torch.arange(n_pilot) % net_cfg.num_classes).to(device) if net_cfg.num_classes else None
    cond, uncond = conditions(denoiser, Conditioning(class_labels=labels))
    model = guided(denoiser, cond, uncond, guidance)
    x_T = x_T.to(device)
    x_ref = get_sampler("dpmpp_3m")(model, x_T.clone(), sigma_grid(sched, reference_steps, "logsnr"), cond=cond)
    starts = {sp: sigma_grid(sched, nfe, sp) for sp in ("trailing", "logsnr", "karras")}
    return fit_sigmas(get_sampler(sampler), model, x_T, x_ref, starts, sched.sigma_min, max_evals, n_starts, cond,
                      progress=progress)


@torch.no_grad()
def generate(denoiser: Denoiser, n: int, conditioning: Conditioning | None = None, *, sampler: str = "dpmpp_2m",
             steps: int = 20, spacing: str = "karras", guidance: float = 1.0, threshold: str = "none",
             percentile: float = 0.995, seed: int = 0, batch_size: int = 250, progress: bool = False,
             callback: Callable | None = None, bf16: bool = False, sigmas: torch.Tensor | None = None,
             autoencoder: nn.Module | None = None) -> torch.Tensor:
    """Draw n samples (n, C, H, W) in [-1, 1]; with an ``autoencoder`` the sampled latents are decoded.
    (A backbone with a ``sample_shape``, a diffusion prior's, gives (n, *sample_shape) as drawn.)

    ``conditioning`` (``pipelines.conditions.Conditioning``; None: unconditional) holds what the n
    samples are conditioned on: class labels, prompts with their text encoder and negative prompt,
    ControlNet controls, a super-resolution stage's low-res input. Noise comes from one CPU
    generator seeded with ``seed`` (the same images on CPU and GPU, whatever the batch size).
    Guidance other than 1 wraps the denoiser in classifier-free guidance against the null class /
    the negative prompt; ``threshold`` clips its x0 predictions (see ``guided``).
    ``bf16`` runs the network under bfloat16 autocast; the sampler's arithmetic stays float32.
    ``sigmas`` (steps + 1,) overrides the grid; steps/spacing are then ignored. ``spacing="fitted"``
    first fits the grid to this model (``fit_model_grid``; measured on the demo model, one busy CPU
    core: about 4 minutes at 5 steps, 7 at 10). ``progress`` shows a bar: per sampler step when n
    fits one batch, per image otherwise (and the fitted grid's search first).
    """
    conditioning = conditioning or Conditioning()
    device = next(denoiser.net.parameters()).device
    sample = get_sampler(sampler)
    if sigmas is None and spacing == "fitted":
        sigmas = fit_model_grid(denoiser, sampler, steps, guidance=guidance, progress=progress).sigmas
    sigmas = sigma_grid(denoiser.schedule, steps, spacing) if sigmas is None else sigmas
    generator = torch.Generator().manual_seed(seed)
    x_T = prior_noise((n, *sample_shape(denoiser.net)), float(sigmas[0]), generator)
    kwargs = {"variance": "learned"} if sampler == "ddpm" and denoiser.learned_variance else {}
    out = []
    # One batch: the bar counts sampler steps (model calls; a heun step is two), else images per batch.
    per_step = n <= batch_size
    total, unit = (len(sigmas) - 1, "step") if per_step else (n, "img")
    # closed on an error too, so that an error message starts on a line of its own
    with tqdm(total=total, desc=f"sample {n} x {sampler}-{len(sigmas) - 1}", disable=not progress, unit=unit) as bar:
        if per_step:
            callback = _stepping(bar, callback)
        for start in range(0, n, batch_size):
            x = x_T[start:start + batch_size].to(device)
            cond, uncond = conditions(denoiser, conditioning.rows(start, start + batch_size))
            model = guided(windowed(denoiser, sigmas, conditioning.control_steps), cond, uncond, guidance, threshold,
                           percentile)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                x = sample(model, x, sigmas, cond=cond, generator=generator, callback=callback, **kwargs)
            out.append((x if autoencoder is None else autoencoder.decode(x.float())).cpu())
            bar.update(total - bar.n if per_step else len(x))
    if getattr(denoiser.net, "sample_shape", None) is not None:  # a prior's embeddings: no image range
        return torch.cat(out)
    return torch.cat(out).clamp(-1, 1)


def sample_shape(net: nn.Module) -> tuple[int, ...]:
    """The shape of one sample of a backbone: ``net.sample_shape`` where it has one (a diffusion
    prior's (D,)), else (C, S, S) from its config."""
    shape = getattr(net, "sample_shape", None)
    return tuple(shape) if shape is not None else (net.cfg.in_channels, net.cfg.image_size, net.cfg.image_size)


def _stepping(bar, callback: Callable | None) -> Callable:
    """A sampler callback that moves ``bar`` to step i + 1, then calls ``callback``."""

    def step(i, sigma, x, x0):
        bar.update(max(0, i + 1 - bar.n))
        if callback is not None:
            callback(i, sigma, x, x0)

    return step


def sampling_options(sample, **overrides) -> dict:
    """generate()'s sampling keywords from a run's SampleConfig, with the ``overrides`` that are not None."""
    options = dict(sampler=sample.sampler, steps=sample.steps, spacing=sample.spacing, guidance=sample.guidance,
                   threshold=sample.threshold, percentile=sample.percentile)
    return options | {k: v for k, v in overrides.items() if v is not None}


def text_encoder_for(cfg: RunConfig) -> TextEncoder | None:
    """The run's frozen text encoder (None when it is not a text-to-image run)."""
    return None if cfg.text is None else text_encoder(cfg.text)


def shard_training_data(cfg: RunConfig):
    """The run's shard folder (``data.name=shards``) as a streaming data set: its ``x`` the latents of the
    run's autoencoder (stored by ``prepare --latents``) in a latent run, with the stored text embeddings
    in a text-to-image run (checked to be the run's text encoder's)."""
    from latentdiff.data import shard_dataset
    from latentdiff.data.shards import autoencoder_hash

    latent_hash = autoencoder_hash(cfg.autoencoder) if cfg.autoencoder else None
    data = shard_dataset(cfg.data, "train", latent_hash=latent_hash, text=cfg.text is not None)
    stored = (data.manifest["holds"].get("text_embedding") or {}).get("text")
    if cfg.text is not None and stored != cfg.text.to_dict():
        raise ValueError(f"the text embeddings in {cfg.data.root} are of text config {stored}, this run's is "
                         f"{cfg.text.to_dict()}: prepare the shards with the run's text.* settings")
    return data


def text_conditioned(cfg: RunConfig, dataset, extra_prompts: list[str] = ()) -> TextConditioned:
    """``dataset`` (images or their latents) with each item's caption encoded, from the text cache.
    The table also holds ``extra_prompts`` (the training grids' prompts). A recaptioned dataset's
    batches carry its original captions' conditions too (``BlendedText``; train_run blends them)."""
    # latents carry no captions: those of the images they encode
    source = dataset if getattr(dataset, "captions", None) else build_dataset(cfg.data, "train")
    captions, originals = list(source.captions), getattr(source, "original_captions", None)
    table = text_table(cfg.text, captions + list(originals or []) + list(extra_prompts))
    width = table.tokens.shape[-1]
    if cfg.model.context_dim not in (0, width) or cfg.model.pooled_dim not in (0, width):
        raise ValueError(f"the text encoder gives {width}-d states but the U-Net has context_dim "
                         f"{cfg.model.context_dim}, pooled_dim {cfg.model.pooled_dim}")
    if originals is not None:  # recaptioned (data.captions=recaption:PATH): both captions, for the blend
        return BlendedText(dataset, captions, list(originals), table)
    return TextConditioned(dataset, captions, table)


def grid_conditions(cfg: RunConfig, prompts: list[str] | None, n_grid: int | None = None):
    """A training grid's conditions, a row per class (or per grid prompt) of n_grid // rows samples:
    (labels (n,) or None, prompts (n,) or None, n, samples per row)."""
    n_grid = cfg.sample.n_grid if n_grid is None else n_grid
    per_row = max(1, n_grid // (len(prompts) if prompts is not None else max(cfg.model.num_classes, 1)))
    labels = class_grid_labels(cfg.model.num_classes, per_row) if cfg.model.num_classes else None
    grid = None if prompts is None else [p for p in prompts for _ in range(per_row)]
    n = len(labels) if labels is not None else len(grid) if grid is not None else n_grid
    return labels, grid, n, per_row


def diffusion_grid(cfg: RunConfig, prompts: list[str] | None, text_table, autoencoder: nn.Module) -> Callable:
    """The training grid of a diffusion run: a row per class or per grid prompt, from the EMA model."""
    labels, grid, n, _ = grid_conditions(cfg, prompts)
    s = cfg.sample

    def sample_fn(ema_model: nn.Module, step: int) -> torch.Tensor:
        return generate(make_denoiser(ema_model, cfg), n,
                        Conditioning(class_labels=labels, prompts=grid, text_encoder=text_table),
                        sampler=s.sampler, steps=s.steps, spacing=s.spacing, guidance=s.guidance,
                        threshold=s.threshold, percentile=s.percentile, bf16=samples_in_bf16(cfg),
                        autoencoder=autoencoder)

    if prompts is not None:
        sample_fn.caption = "EMA samples, a row per prompt: " + " | ".join(prompts[:4]) + " | ..."
    return sample_fn


def superres_grid(cfg: RunConfig, test, text_table=None) -> Callable:
    """The training grid of a super-resolution run: the first ``n_grid // 2`` test images' low-res
    copies (bicubic-upsampled, top rows) above the EMA model's upscaled samples of them (bottom rows),
    with their captions for a text-conditioned stage and the run's default aug level."""
    k = max(1, cfg.sample.n_grid // 2)
    real = test.get_batch(torch.arange(min(k, len(test))))["x"]
    low = resample(real, cfg.model.image_size // cfg.superres.factor)
    prompts = list(test.captions[:len(real)]) if cfg.text is not None else None
    s = cfg.sample

    def sample_fn(ema_model: nn.Module, step: int) -> torch.Tensor:
        images = generate(make_denoiser(ema_model, cfg), len(low),
                          Conditioning(prompts=prompts, text_encoder=text_table,
                                       shared=augment_at_level(low, cfg.superres.aug_level, seed=1)),
                          sampler=s.sampler, steps=s.steps, spacing=s.spacing, guidance=s.guidance,
                          threshold=s.threshold, percentile=s.percentile, bf16=samples_in_bf16(cfg))
        return torch.cat([resample(low, cfg.model.image_size), images])

    sample_fn.caption = (f"top: low-res test images ({low.shape[-1]} px, bicubic), bottom: upscaled by the EMA "
                         f"model (aug level {cfg.superres.aug_level:g})")
    sample_fn.nrow = len(low)
    return sample_fn


@seeded_run
def train_run(cfg: RunConfig, out_dir: str | Path, cpu: bool | None = None) -> dict:
    """Train ``cfg`` into the run folder ``out_dir`` (resumes when it holds a checkpoint), the network
    in the faster memory format for the device and precision (``accel.training_memory_format``).
    An image folder's config is checked against the folder first (``data.resolve.resolve_data``)."""
    cfg, _ = resolve_data(cfg)
    autoencoder = autoencoder_for(cfg)
    if cfg.data.name == "shards":  # streamed; latents and text embeddings come stored in the shards
        dataset = shard_training_data(cfg)
    else:
        dataset = latent_dataset(cfg, autoencoder) if cfg.autoencoder else build_dataset(cfg.data, "train")
    prompts = grid_prompts(cfg.data) if cfg.text is not None else None
    grid_of_test = cfg.superres is not None or cfg.unclip is not None
    test = build_dataset(cfg.data, "test") if grid_of_test else None
    if prompts is not None and cfg.data.name == "shards":
        dataset.table = text_table(cfg.text, prompts)  # the training grid's prompts only
    elif prompts is not None:  # an upsampler's or decoder's grid shows test images: their captions join the table
        extra = list(test.captions[:cfg.sample.n_grid]) if test is not None else []
        dataset = text_conditioned(cfg, dataset, prompts + extra)
    net = build_backbone(cfg)
    net = net.to(memory_format=training_memory_format(cfg.train.mixed_precision, cpu))
    if cfg.superres is not None:
        loss_fn = SuperResLoss(cfg.diffusion, cfg.superres, num_classes=cfg.model.num_classes)
        sample_fn = superres_grid(cfg, test, getattr(dataset, "table", None))
    elif cfg.unclip is not None:
        from latentdiff.pipelines.unclip import decoder_parts

        cfg, dataset, loss_fn, sample_fn = decoder_parts(cfg, dataset, test, autoencoder)
    else:
        loss_fn = diffusion_loss(cfg.diffusion, num_classes=cfg.model.num_classes)
        sample_fn = diffusion_grid(cfg, prompts, getattr(dataset, "table", None), autoencoder)
    if isinstance(dataset, BlendedText):
        loss_fn = CaptionBlend(loss_fn, cfg.data.caption_blend)
    trainer = Trainer(net, loss_fn, dataset, cfg.train, out_dir, run_config=cfg.to_dict(), sample_fn=sample_fn,
                      cpu=cpu)
    return trainer.train()
