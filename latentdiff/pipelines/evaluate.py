"""Evaluate a class-conditional image model: FD-EffNet with its floor, and class accuracy (DESIGN.md section 5)."""

from __future__ import annotations

import time

import torch

from latentdiff.data import build_dataset
from latentdiff.eval import class_accuracy, fd_with_floor, load_or_train_classifier
from latentdiff.pipelines.diffusion import generate, samples_in_bf16
from latentdiff.precond import Denoiser
from latentdiff.presets import RunConfig


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """(n,) labels cycling through the classes, so every class gets n / num_classes samples."""
    return torch.arange(n) % num_classes


def evaluate_images(images: torch.Tensor, labels: torch.Tensor | None, cfg: RunConfig, seed: int = 0) -> dict:
    """FD-EffNet (+ floor at the same N) of ``images`` (N, C, H, W) against the test split,
    and, for labelled Fashion-MNIST samples, class accuracy beside the real test images' accuracy."""
    test, train = build_dataset(cfg.data, "test"), build_dataset(cfg.data, "train")
    report = fd_with_floor(images, test, train, n=len(images), seed=seed)
    if labels is not None and cfg.data.name == "fmnist":
        classifier = load_or_train_classifier("fmnist", cfg.data.image_size)
        report["class_accuracy"] = class_accuracy(classifier, images, labels)
        real = test.get_batch(torch.arange(len(test)))
        report["real_class_accuracy"] = class_accuracy(classifier, real["x"], real["label"])
        report["relative_class_accuracy"] = report["class_accuracy"] / report["real_class_accuracy"]
    return report


def evaluate_model(denoiser: Denoiser, cfg: RunConfig, n: int = 1000, *, sampler: str | None = None,
                   steps: int | None = None, spacing: str | None = None, guidance: float | None = None,
                   seed: int = 0, progress: bool = True,
                   autoencoder: torch.nn.Module | None = None) -> tuple[dict, torch.Tensor, torch.Tensor | None]:
    """Sample n images (balanced classes) with the run's default sampling unless overridden; returns
    (report, images, labels). The report includes the sampler settings and sampling images/s
    (decoding included for latent models: pass their ``autoencoder``)."""
    s = cfg.sample
    sampler, steps = sampler or s.sampler, steps or s.steps
    spacing, guidance = spacing or s.spacing, s.guidance if guidance is None else guidance
    labels = balanced_labels(n, cfg.model.num_classes) if cfg.model.num_classes else None
    start = time.perf_counter()
    images = generate(denoiser, n, class_labels=labels, sampler=sampler, steps=steps, spacing=spacing,
                      guidance=guidance, seed=seed, progress=progress, bf16=samples_in_bf16(cfg),
                      autoencoder=autoencoder)
    seconds = time.perf_counter() - start
    report = evaluate_images(images, labels, cfg, seed=seed)
    report.update(sampler=sampler, steps=steps, spacing=spacing, guidance=guidance,
                  sample_seconds=round(seconds, 1), sample_images_per_s=n / seconds)
    return report, images, labels
