"""DMD / DMD2 orchestration: teacher checks, the regression pairs, the training run, loading students.
No maths here (see latentdiff.objectives.dmd)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from latentdiff.autoencoders.losses import EffNetPerceptual
from latentdiff.conditioning import TextConditioned, text_table
from latentdiff.data import build_dataset, grid_prompts
from latentdiff.io.checkpoint import load_checkpoint
from latentdiff.objectives.dmd import DistributionMatching
from latentdiff.pipelines.autoencoder import autoencoder_for, latent_dataset
from latentdiff.pipelines.conditions import Conditioning
from latentdiff.pipelines.diffusion import (build_backbone, generate, grid_conditions, load_denoiser, make_denoiser,
                                            samples_in_bf16)
from latentdiff.precond import Denoiser
from latentdiff.presets import DMDRunConfig, PairsConfig, RunConfig, is_dmd_config
from latentdiff.training.start import seeded_run
from latentdiff.training.trainer import Trainer


def check_teacher(cfg: DMDRunConfig, teacher: RunConfig) -> None:
    """ValueError unless the teacher has the parameterisation and resolution the DMD config is for."""
    got = (teacher.diffusion.parameterisation, teacher.model.image_size)
    if got != (cfg.parameterisation, cfg.image_size):
        raise ValueError(
            f"teacher {cfg.teacher} is a {got[0]}-prediction model at {got[1]}x{got[1]}, but this DMD config is for "
            f"{cfg.parameterisation}-prediction at {cfg.image_size}x{cfg.image_size}: use a matching teacher or "
            f"--set parameterisation={got[0]} image_size={got[1]} if its settings suit it")


class Pairs:
    """DMD's regression pairs as a ``get_batch`` dataset: ``{"z": noise, "x": the teacher's sample from
    it, "label"}`` (labels for class-conditional teachers; ``captions`` for text-to-image ones)."""

    def __init__(self, tensors: dict[str, torch.Tensor], captions: list[str] | None = None):
        self.tensors, self.captions = tensors, captions

    def __len__(self) -> int:
        return len(self.tensors["z"])

    def get_batch(self, index: torch.Tensor) -> dict:
        return {k: v[index] for k, v in self.tensors.items()}


def pair_conditions(teacher_cfg: RunConfig, n: int, seed: int) -> tuple[torch.Tensor | None, list[str] | None]:
    """The pairs' conditions: balanced class labels, or n training captions drawn with ``seed``."""
    if teacher_cfg.text is not None:
        captions = build_dataset(teacher_cfg.data, "train").captions
        pick = torch.randperm(len(captions), generator=torch.Generator().manual_seed(seed))[:n]
        return None, [captions[int(i)] for i in pick]
    if teacher_cfg.model.num_classes:
        return torch.arange(n) % teacher_cfg.model.num_classes, None
    return None, None


@torch.no_grad()
def make_pairs(teacher: Denoiser, teacher_cfg: RunConfig, pairs: PairsConfig, guidance: float,
               text_encoder=None, progress: bool = True) -> Pairs:
    """n pairs (z standard normal, the teacher's deterministic sample from z): ``generate`` with
    seed ``pairs.seed`` draws x_T = sqrt(1 + sigma_max^2) z from exactly this z."""
    labels, prompts = pair_conditions(teacher_cfg, pairs.n, pairs.seed)
    shape = (pairs.n, teacher_cfg.model.in_channels, teacher_cfg.model.image_size, teacher_cfg.model.image_size)
    z = torch.randn(shape, generator=torch.Generator().manual_seed(pairs.seed))
    x = generate(teacher, pairs.n, Conditioning(class_labels=labels, prompts=prompts, text_encoder=text_encoder),
                 sampler=pairs.sampler, steps=pairs.steps, spacing=pairs.spacing, guidance=guidance, seed=pairs.seed,
                 bf16=samples_in_bf16(teacher_cfg), progress=progress)
    tensors = {"z": z, "x": x} if labels is None else {"z": z, "x": x, "label": labels}
    return Pairs(tensors, prompts)


def stored_pairs(out_dir: Path, teacher: Denoiser, cfg: DMDRunConfig, text_encoder=None) -> Pairs:
    """The run's pairs from ``out_dir/pairs.safetensors``, made (and timed) on the first call."""
    path, info = out_dir / "pairs.safetensors", out_dir / "pairs.json"
    key = {"teacher": cfg.teacher, "pairs": cfg.pairs.to_dict(), "guidance": cfg.dmd.guidance}
    if path.exists() and info.exists() and json.loads(info.read_text())["key"] == key:
        meta = json.loads(info.read_text())
        return Pairs(load_file(path), meta.get("captions"))
    start = time.perf_counter()
    pairs = make_pairs(teacher, cfg.teacher_config, cfg.pairs, cfg.dmd.guidance, text_encoder)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in pairs.tensors.items()}, path)
    info.write_text(json.dumps({"key": key, "seconds": time.perf_counter() - start, "captions": pairs.captions}))
    return pairs


def regression_distance(cfg: DMDRunConfig, autoencoder: nn.Module, device: torch.device):
    """d(a, b) (B,): the LPIPS-like EffNet distance on images (latents decoded first); None for DMD2."""
    if not cfg.dmd.regression_weight:
        return None
    perceptual = EffNetPerceptual(cfg.dmd.perceptual_size).to(device)
    if not cfg.teacher_config.autoencoder:
        return perceptual
    return lambda a, b: perceptual(autoencoder.decode(a.float()), autoencoder.decode(b.float()))


def student_denoiser(module: DistributionMatching, teacher_cfg: RunConfig) -> Denoiser:
    return make_denoiser(module.generator.net, teacher_cfg)


@seeded_run
def train_dmd_run(cfg: DMDRunConfig, out_dir: str | Path, cpu: bool | None = None) -> dict:
    """Distil ``cfg.teacher`` into ``out_dir`` (resumes). A non-finite loss stops the run with its last
    good checkpoint kept, naming the loss (dm, regression, fake, gan_g, gan_d)."""
    out_dir = Path(out_dir)
    device = torch.device("cpu" if cpu or (cpu is None and not torch.cuda.is_available()) else "cuda")
    teacher, teacher_cfg = load_denoiser(cfg.teacher, device=device)
    check_teacher(cfg, teacher_cfg)
    cfg = cfg.replace(teacher_config=teacher_cfg)
    autoencoder = autoencoder_for(teacher_cfg, device)
    prompts = grid_prompts(teacher_cfg.data) if teacher_cfg.text is not None else None
    train = build_dataset(teacher_cfg.data, "train")
    table = text_table(teacher_cfg.text, list(train.captions) + prompts) if prompts is not None else None
    if cfg.pairs.n:
        dataset = stored_pairs(out_dir, teacher, cfg, table)
    else:
        dataset = latent_dataset(teacher_cfg, autoencoder) if teacher_cfg.autoencoder else train
    if table is not None:  # every pair's caption is a training caption: one table serves both
        dataset = TextConditioned(dataset, list(getattr(dataset, "captions", None) or train.captions), table)
    module = DistributionMatching(teacher, cfg.dmd, teacher_cfg.diffusion, teacher_cfg.model.num_classes,
                                  regression_distance(cfg, autoencoder, device))
    bf16 = cfg.train.mixed_precision == "bf16"

    def loss_fn(model: nn.Module, batch: dict, generator: torch.Generator):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(batch, generator)

    sample_fn = student_grid(cfg, teacher_cfg, autoencoder, prompts, getattr(dataset, "table", None))
    trainer = Trainer(module, loss_fn, dataset, cfg.train.replace(mixed_precision="no"), out_dir,
                      run_config=cfg.to_dict(), sample_fn=sample_fn, cpu=cpu,
                      unused_parameters=cfg.dmd.fake_updates > 1)
    return trainer.train()


def student_grid(cfg: DMDRunConfig, teacher_cfg: RunConfig, autoencoder, prompts, table):
    """The training grids: the EMA student's k-step samples, a row per class (or grid prompt)."""
    labels, grid, n, per_row = grid_conditions(teacher_cfg, prompts, cfg.sample.n_grid)

    def sample_fn(ema_model: nn.Module, step: int) -> torch.Tensor:
        return generate(student_denoiser(ema_model, teacher_cfg), n,
                        Conditioning(class_labels=labels, prompts=grid, text_encoder=table),
                        sampler=cfg.sample.sampler, steps=cfg.sample.steps, spacing=cfg.sample.spacing, guidance=1.0,
                        bf16=samples_in_bf16(teacher_cfg), autoencoder=autoencoder)

    sample_fn.caption = f"EMA student, {cfg.sample.steps} step(s), a row per {'prompt' if prompts else 'class'}"
    sample_fn.nrow = per_row
    return sample_fn


def load_student(ckpt: str | Path, use_ema: bool = True, device: str | torch.device = "cpu"):
    """A DMD checkpoint -> (the student as a Denoiser, autoencoder, the teacher's RunConfig with the
    student's sampling defaults (sampler ``consistency``, trailing, its step count, no guidance),
    DMDRunConfig). The student's k steps are ``generate(..., sampler="consistency", steps=k)``."""
    state = load_checkpoint(ckpt, trainer_state=False)
    if not is_dmd_config(state.config):
        raise ValueError(f"{ckpt} is not a DMD checkpoint (its config has no task='dmd')")
    cfg = DMDRunConfig.from_dict(state.config)
    weights = state.ema_state if use_ema and state.ema_state is not None else state.model_state
    prefix = "generator.net."
    net = build_backbone(cfg.teacher_config)
    net.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
    run_cfg = cfg.teacher_config.replace(sample=cfg.sample)
    return make_denoiser(net.to(device).eval(), run_cfg), autoencoder_for(run_cfg, device), run_cfg, cfg


__all__ = ["Pairs", "check_teacher", "load_student", "make_pairs", "stored_pairs", "train_dmd_run"]
