"""Evaluate an image model: FD-EffNet with its floor, class accuracy, prompt adherence, control
fidelity (DESIGN.md section 5)."""

from __future__ import annotations

import time

import torch

from latentdiff.data import build_dataset, class_caption, require_test_split
from latentdiff.data.control import control_maps
from latentdiff.eval import class_accuracy, fd_with_floor, load_or_train_classifier
from latentdiff.eval.adherence import score, summarize
from latentdiff.eval.control import control_fidelity
from latentdiff.pipelines.controlnet import control_images, dataset_controls
from latentdiff.pipelines.conditions import Conditioning
from latentdiff.pipelines.diffusion import generate, samples_in_bf16, text_encoder_for
from latentdiff.precond import Denoiser
from latentdiff.presets import ControlNetRunConfig, RunConfig


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """(n,) labels cycling through the classes, so every class gets n / num_classes samples."""
    return torch.arange(n) % num_classes


def evaluate_images(images: torch.Tensor, labels: torch.Tensor | None, cfg: RunConfig, seed: int = 0) -> dict:
    """FD-EffNet (+ floor at the same N) of ``images`` (N, C, H, W) against the test split,
    and, for labelled Fashion-MNIST samples, class accuracy beside the real test images' accuracy."""
    require_test_split(cfg.data)
    test, train = build_dataset(cfg.data, "test"), build_dataset(cfg.data, "train")
    report = fd_with_floor(images, test, train, n=len(images), seed=seed)
    if labels is not None and cfg.data.name == "fmnist":
        classifier = load_or_train_classifier("fmnist", cfg.data.image_size)
        report["class_accuracy"] = class_accuracy(classifier, images, labels)
        real = test.get_batch(torch.arange(len(test)))
        report["real_class_accuracy"] = class_accuracy(classifier, real["x"], real["label"])
        report["relative_class_accuracy"] = report["class_accuracy"] / report["real_class_accuracy"]
    return report


def evaluation_prompts(cfg: RunConfig, n: int) -> tuple[list[str], torch.Tensor | None]:
    """n prompts for a text-to-image run's FD and accuracy, and their class labels where they have
    them: Fashion-MNIST: "a photo of {class}" for balanced classes; others: the test split's captions."""
    if cfg.data.name == "fmnist":
        labels = balanced_labels(n, 10)
        return [class_caption(int(y)) for y in labels], labels
    captions = build_dataset(cfg.data, "test").captions
    return [captions[i % len(captions)] for i in range(n)], None


def evaluate_model(denoiser: Denoiser, cfg: RunConfig, n: int = 1000, *, sampler: str | None = None,
                   steps: int | None = None, spacing: str | None = None, guidance: float | None = None,
                   seed: int = 0, progress: bool = True, autoencoder: torch.nn.Module | None = None,
                   text_encoder=None) -> tuple[dict, torch.Tensor, torch.Tensor | None]:
    """Sample n images (balanced classes; for text-to-image, ``evaluation_prompts``) with the run's
    default sampling unless overridden; returns (report, images, labels). The report includes the
    sampler settings and sampling images/s (decoding included for latent models: pass their
    ``autoencoder``; text encoding included for text-to-image). An image folder without train/ and
    test/ splits is refused before any sampling (``data.require_test_split``)."""
    require_test_split(cfg.data)
    s = cfg.sample
    sampler, steps = sampler or s.sampler, steps or s.steps
    spacing, guidance = spacing or s.spacing, s.guidance if guidance is None else guidance
    labels = balanced_labels(n, cfg.model.num_classes) if cfg.model.num_classes else None
    prompts = None
    if cfg.text is not None:
        prompts, labels = evaluation_prompts(cfg, n)
        text_encoder = text_encoder or text_encoder_for(cfg)
    start = time.perf_counter()
    images = generate(denoiser, n,
                      Conditioning(class_labels=labels if cfg.model.num_classes else None, prompts=prompts,
                                   text_encoder=text_encoder),
                      sampler=sampler, steps=steps, spacing=spacing, guidance=guidance, threshold=s.threshold,
                      percentile=s.percentile, seed=seed, progress=progress, bf16=samples_in_bf16(cfg),
                      autoencoder=autoencoder)
    seconds = time.perf_counter() - start
    report = evaluate_images(images, labels, cfg, seed=seed)
    report.update(sampler=sampler, steps=steps, spacing=spacing, guidance=guidance,
                  sample_seconds=round(seconds, 1), sample_images_per_s=n / seconds)
    return report, images, labels


def evaluate_adherence(denoiser: Denoiser, cfg: RunConfig, prompts: list[str], n_per_prompt: int = 16, *,
                       guidance: float | None = None, sampler: str | None = None, steps: int | None = None,
                       spacing: str | None = None, seed: int = 0, progress: bool = True,
                       autoencoder: torch.nn.Module | None = None, text_encoder=None) -> tuple[dict, torch.Tensor]:
    """Prompt adherence on ``shapes`` (``eval.adherence``): ``n_per_prompt`` samples of each prompt,
    read back by the exact parser. Returns (report, images (P * K, C, H, W), prompt-major)."""
    s = cfg.sample
    guidance = s.guidance if guidance is None else guidance
    repeated = [p for p in prompts for _ in range(n_per_prompt)]
    images = generate(denoiser, len(repeated),
                      Conditioning(prompts=repeated, text_encoder=text_encoder or text_encoder_for(cfg)),
                      sampler=sampler or s.sampler, steps=steps or s.steps, spacing=spacing or s.spacing,
                      guidance=guidance, threshold=s.threshold, percentile=s.percentile, seed=seed, progress=progress,
                      bf16=samples_in_bf16(cfg), autoencoder=autoencoder)
    scores = [[score(p, images[i * n_per_prompt + k]) for k in range(n_per_prompt)] for i, p in enumerate(prompts)]
    report = summarize(prompts, scores)
    report.update(guidance=guidance, n_per_prompt=n_per_prompt, sampler=sampler or s.sampler,
                  steps=steps or s.steps, seed=seed)
    return report, images


def evaluate_control(denoiser: Denoiser, cfg: RunConfig, cn_cfg: ControlNetRunConfig, n: int = 500, *,
                     guidance: float | None = None, sampler: str | None = None, steps: int | None = None,
                     seed: int = 0, tolerance: int = 1, progress: bool = True,
                     autoencoder: torch.nn.Module | None = None, text_encoder=None) -> tuple[dict, dict]:
    """Control fidelity (``eval.control``) and FD-EffNet on n held-out controls: a seeded random
    subset of the test split, each item's control map and caption (or class label). Generates with
    the ControlNet (scale 1) and without it (scale 0: exactly the base model) from the same prompts
    and noise. ``denoiser``'s net is a ControlledUNet holding the one ControlNet of ``cn_cfg``.
    Returns (report, pictures): pictures maps row names to (n, C, H, W) images in [-1, 1]."""
    s = cn_cfg.sample
    test, maps = dataset_controls(cfg.data, cn_cfg.control, "test")
    index = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n]
    control = maps[index].float()
    real = test.get_batch(index)
    prompts = [test.captions[i] for i in index.tolist()] if cfg.text is not None else None
    labels = real["label"] if cfg.model.num_classes else None
    condition = Conditioning(class_labels=labels, prompts=prompts, control=control,
                             text_encoder=(text_encoder or text_encoder_for(cfg)) if prompts is not None else None)
    common = dict(sampler=sampler or s.sampler, steps=steps or s.steps, spacing=s.spacing,
                  guidance=s.guidance if guidance is None else guidance, threshold=s.threshold,
                  percentile=s.percentile, seed=seed, progress=progress, bf16=samples_in_bf16(cfg),
                  autoencoder=autoencoder)
    report = {"kind": cn_cfg.control.kind, "n": n, "seed": seed, "guidance": common["guidance"],
              "sampler": common["sampler"], "steps": common["steps"]}
    pictures = {"held-out control": control_images(control, real["x"].shape[1])}
    train = build_dataset(cfg.data, "train")
    for name, scale, row in (("with_control", 1.0, "with control"),
                             ("without_control", 0.0, "without control (the base model)")):
        images = generate(denoiser, n, condition.replace(control_scale=(scale,)), **common)
        generated_maps = control_maps(images, cn_cfg.control)
        report[name] = control_fidelity(cn_cfg.control.kind, generated_maps, maps[index], tolerance)
        report[name].update(fd_with_floor(images, test, train, n=n, seed=seed))
        pictures[row] = images
        pictures[f"{row}: {cn_cfg.control.kind} of the sample"] = control_images(generated_maps, images.shape[1])
    pictures["the real image"] = real["x"]
    report["fd_ratio_with_over_without"] = report["with_control"]["fd_effnet"] / report["without_control"]["fd_effnet"]
    return report, pictures
