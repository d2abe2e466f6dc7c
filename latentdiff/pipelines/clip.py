"""Orchestration for the CLIP-style joint embedding (Radford et al. 2021): build, train, load,
evaluate. DALL·E 2 (Ramesh et al. 2022) trains its prior and decoder on such a model's
embeddings; the CLIP score of generated images uses it. No maths here (``latentdiff.clip``)."""

from __future__ import annotations

from pathlib import Path

import torch

from latentdiff.clip.data import CaptionIds, fmnist_class_prompts
from latentdiff.clip.loss import CLIPLoss
from latentdiff.clip.metrics import clip_score, retrieval_recall, zero_shot_accuracy
from latentdiff.clip.model import CLIPModel
from latentdiff.conditioning import TextEncoder, text_table
from latentdiff.conditioning.text import text_encoder as frozen_text_encoder
from latentdiff.data import build_dataset
from latentdiff.io.checkpoint import load_run_model
from latentdiff.presets.clip import CLIPRunConfig
from latentdiff.training.start import seeded_run
from latentdiff.training.trainer import Trainer

EVAL_N = {"fmnist": 10_000, "shapes": 1_000}  # test images evaluate_clip scores by default (others: 1,000)


def captions_of(dataset, name: str) -> list[str]:
    """A dataset's captions (one per item), or ValueError when it has none."""
    captions = getattr(dataset, "captions", None)
    if not captions:
        raise ValueError(f"dataset {name!r} has no captions: a CLIP run needs captioned images "
                         "(shapes, fmnist, or an image folder with <stem>.txt / metadata.jsonl captions)")
    return list(captions)


def build_clip(cfg: CLIPRunConfig) -> CLIPModel:
    return CLIPModel(cfg.clip)


def _check_text_width(cfg: CLIPRunConfig, table) -> None:
    width = table.tokens.shape[-1]
    if width != cfg.clip.text_dim:
        raise ValueError(f"the text encoder gives {width}-d token states but clip.text_dim={cfg.clip.text_dim}")


@seeded_run
def train_clip_run(cfg: CLIPRunConfig, out_dir: str | Path, cpu: bool | None = None) -> dict:
    """Train ``cfg`` into the run folder ``out_dir`` (resumes when it holds a checkpoint).

    The training split's captions are encoded once by the frozen text encoder (the disk cache of
    ``conditioning.text_cache``); each batch carries their token states and caption ids, so that
    repeated captions are positives of each other (``clip.loss``). Returns the trainer's summary."""
    dataset = build_dataset(cfg.data, "train")
    captions = captions_of(dataset, cfg.data.name)
    table = text_table(cfg.text, captions)
    _check_text_width(cfg, table)
    trainer = Trainer(build_clip(cfg), CLIPLoss(), CaptionIds(dataset, captions, table), cfg.train, out_dir,
                      run_config=cfg.to_dict(), cpu=cpu)
    return trainer.train()


def load_clip(ckpt: str | Path, use_ema: bool = True, device: str | torch.device = "cpu",
              text_encoder: bool = True) -> tuple[CLIPModel, CLIPRunConfig, TextEncoder | None]:
    """A CLIP checkpoint directory -> (CLIPModel in eval mode, frozen, its run config, the run's
    frozen text encoder (``condition(prompts)`` for any prompt; None when ``text_encoder`` is False))."""
    model, cfg = load_run_model(ckpt, "clip", "CLIP", CLIPRunConfig, build_clip, use_ema)
    model = model.to(device)
    encoder = frozen_text_encoder(cfg.text) if text_encoder else None
    return model, cfg, encoder


def eval_split(cfg: CLIPRunConfig, n: int | None = None, seed: int = 0):
    """The held-out images evaluate_clip scores: (images (n, C, S, S), labels (n,), captions (n)).
    ``shapes``: the first n test images (item i of a split does not depend on the split's size);
    others: a seeded random subset of n test images (all of them when n covers the split)."""
    n = n or EVAL_N.get(cfg.data.name, 1000)
    data = cfg.data.replace(n=n) if cfg.data.name == "shapes" else cfg.data
    test = build_dataset(data, "test")
    captions = captions_of(test, cfg.data.name)
    if cfg.data.name == "shapes" or n >= len(test):
        index = torch.arange(min(n, len(test)))
    else:
        index = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n]
    batch = test.get_batch(index)
    return batch["x"], batch["label"], [captions[i] for i in index.tolist()]


@torch.no_grad()
def evaluate_clip(model: CLIPModel, cfg: CLIPRunConfig, n: int | None = None, seed: int = 0,
                  encoder: TextEncoder | None = None) -> dict:
    """Held-out scores of a CLIP-style model, keys prefixed by the dataset's name.

    Fashion-MNIST (n = 10,000 test images by default): ``fmnist_zero_shot_accuracy`` (nearest
    class embedding, each the mean over the class's 15 caption prompts: ``clip.data``) beside
    ``fmnist_classifier_accuracy`` (latentdiff's supervised classifier on the same images).
    Others (``shapes``: the first 1,000 test images, which include the held-out colour-shape
    pairs): text -> image and image -> text Recall@1 and @5 (``clip.metrics.retrieval_recall``),
    ``<name>_recall_chance`` = 1/N and the exact chance levels with shared captions.
    Both: ``<name>_clip_score_real``, the CLIP score of the real test images with their own
    captions (the reference for generated images' CLIP scores), and ``<name>_n_images``.
    The prompts are encoded once into the text cache (``encoder``, when given, is used for that).
    """
    images, labels, captions = eval_split(cfg, n, seed)
    name = cfg.data.name
    prompts = fmnist_class_prompts() if name == "fmnist" else []
    table = text_table(cfg.text, captions + [p for group in prompts for p in group], encoder=encoder)
    _check_text_width(cfg, table)
    report = {f"{name}_n_images": len(images),
              f"{name}_clip_score_real": clip_score(model, images, captions, table)}
    if name == "fmnist":
        from latentdiff.eval.classifier import class_accuracy, load_or_train_classifier

        report["fmnist_zero_shot_accuracy"] = zero_shot_accuracy(model, images, labels, prompts, table)
        classifier = load_or_train_classifier("fmnist", cfg.data.image_size)
        report["fmnist_classifier_accuracy"] = class_accuracy(classifier, images, labels)
        return report
    recall = retrieval_recall(model, images, captions, table, ks=(1, 5))
    for k in (1, 5):
        report[f"{name}_t2i_recall_at_{k}"] = recall[f"t2i_recall@{k}"]
        report[f"{name}_i2t_recall_at_{k}"] = recall[f"i2t_recall@{k}"]
        report[f"{name}_t2i_chance_at_{k}"] = recall[f"t2i_chance@{k}"]
        report[f"{name}_i2t_chance_at_{k}"] = recall[f"i2t_chance@{k}"]
    report[f"{name}_recall_chance"] = recall["chance@1"]
    report[f"{name}_n_captions"] = recall["n_captions"]
    return report


def images_for_clip(images: torch.Tensor, cfg: CLIPRunConfig) -> torch.Tensor:
    """(N, C, H, W) images in [-1, 1] as the CLIP model reads them: resized (antialiased bicubic) to
    its side and converted to its channels (grey repeated to RGB, RGB averaged to grey)."""
    from latentdiff.nn.superres import resample

    images = resample(images.float(), cfg.clip.image_size)
    if images.shape[1] != cfg.clip.in_channels:
        images = images.mean(1, keepdim=True) if cfg.clip.in_channels == 1 else images.expand(-1, 3, -1, -1)
    return images


@torch.no_grad()
def evaluate_clip_score(ckpt: str | Path, clip_ckpt: str | Path, prompts: list[str], n_per_prompt: int = 4, *,
                        seed: int = 0, progress: bool = True, **sampling) -> dict:
    """The CLIP score (100 x mean cosine of image and prompt, with latentdiff's own CLIP-style model
    ``clip_ckpt``; never comparable with published CLIP scores) of a text-to-image checkpoint's
    samples: ``n_per_prompt`` of each prompt, with its default sampling unless ``sampling``
    (generate()'s sampler, steps, guidance, ...) says otherwise."""
    from latentdiff.clip.metrics import clip_score
    from latentdiff.pipelines.conditions import Conditioning
    from latentdiff.pipelines.diffusion import (generate, load_model, samples_in_bf16, sampling_options,
                                                text_encoder_for)

    denoiser, autoencoder, cfg = load_model(ckpt)
    if cfg.text is None:
        raise ValueError(f"{ckpt} is not a text-to-image model: a CLIP score needs prompts")
    model, clip_cfg, encoder = load_clip(clip_ckpt)
    options = sampling_options(cfg.sample, **sampling)
    repeated = [p for p in prompts for _ in range(n_per_prompt)]
    images = generate(denoiser, len(repeated), Conditioning(prompts=repeated, text_encoder=text_encoder_for(cfg)),
                      seed=seed, progress=progress, bf16=samples_in_bf16(cfg), autoencoder=autoencoder, **options)
    return {"clip_score": clip_score(model, images_for_clip(images, clip_cfg), repeated, encoder),
            "clip": str(clip_ckpt), "checkpoint": str(ckpt), "n_prompts": len(prompts), "n_per_prompt": n_per_prompt,
            "seed": seed, **options}
