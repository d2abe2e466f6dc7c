"""Orchestration for the image captioner (DALL·E 3, Betker et al. 2023): train it on the labelled share,
load it, caption a batch of images or a whole dataset (greedy or beam), and measure its descriptive
captions on held-out ``shapes`` images with the exact scene reader. No maths here (``captioning``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from latentdiff.captioning.data import LabelledShare, labelled_indices, style_captions
from latentdiff.captioning.model import STYLES, Captioner, PromptUpsampler
from latentdiff.captioning.text import CaptionLoss, beam, build_vocab, greedy
from latentdiff.data import build_dataset
from latentdiff.io.checkpoint import load_run_model
from latentdiff.presets.captioning import CaptionerRunConfig
from latentdiff.training.start import seeded_run
from latentdiff.training.trainer import Trainer


def labelled_share(cfg: CaptionerRunConfig) -> tuple[object, torch.Tensor]:
    """(the training split, the indices of its labelled share); the data must carry scene attributes."""
    train = build_dataset(cfg.data, "train")
    if not hasattr(train, "attributes"):
        raise ValueError(f"dataset {cfg.data.name!r} has no scene attributes: the captioner trains on shapes")
    return train, labelled_indices(len(train), cfg.labelled_share, cfg.share_seed)


@seeded_run
def train_captioner_run(cfg: CaptionerRunConfig, out_dir: str | Path, cpu: bool | None = None) -> dict:
    """Train a captioner into ``out_dir`` (resumes when it holds a checkpoint) on the labelled share
    only: its vocabulary is the words of the share's captions in both styles (filled into the saved
    config), every image is trained on its short and its descriptive caption."""
    train, index = labelled_share(cfg)
    upsampler = cfg.task == "upsampler"  # short -> descriptive, from the same pairs
    words = build_vocab([c for s in STYLES for c in style_captions(train, index, s)])
    if cfg.captioner.vocab and tuple(cfg.captioner.vocab) != words:
        raise ValueError("captioner.vocab differs from the labelled share's words; leave it empty to fill it in")
    cfg = cfg.replace(captioner=cfg.captioner.replace(vocab=words))
    data = LabelledShare(train, index, cfg.captioner, images=not upsampler, mirror=cfg.mirror and not upsampler,
                         canonical_order=cfg.canonical_order)
    loss = CaptionLoss((STYLES.index("descriptive"),) if upsampler else None, cfg.input_noise)
    trainer = Trainer(build_model(cfg), loss, data, cfg.train, out_dir, run_config=cfg.to_dict(), cpu=cpu)
    return trainer.train()


def load_captioner(ckpt: str | Path, use_ema: bool = True) -> tuple[Captioner, CaptionerRunConfig]:
    """A captioner checkpoint -> (Captioner in eval mode, its run config)."""
    return load_run_model(ckpt, "captioner", "captioner", CaptionerRunConfig, build_model, use_ema)


def load_upsampler(ckpt: str | Path, use_ema: bool = True) -> tuple[PromptUpsampler, CaptionerRunConfig]:
    """A prompt upsampler checkpoint -> (PromptUpsampler in eval mode, its run config)."""
    return load_run_model(ckpt, "upsampler", "prompt upsampler", CaptionerRunConfig, build_model, use_ema)


def build_model(cfg: CaptionerRunConfig) -> Captioner | PromptUpsampler:
    return (PromptUpsampler if cfg.task == "upsampler" else Captioner)(cfg.captioner)


def upsample_prompts(upsampler: PromptUpsampler, prompts: list[str], seed: int = 0,
                     temperature: float = 1.0) -> list[str]:
    """Short prompts -> descriptive prompts, what they leave open drawn from the upsampler (one draw
    per prompt, from a CPU generator seeded with ``seed``). A word outside its vocabulary is named."""
    from latentdiff.captioning.text import encode_captions, sample

    source = encode_captions(upsampler.cfg, list(prompts), "short")
    return sample(upsampler, source, "descriptive", temperature, torch.Generator().manual_seed(seed))


@torch.no_grad()
def caption_images(model: Captioner, images: torch.Tensor, style: str = "descriptive", beam_width: int = 1,
                   batch_size: int = 500, progress: bool = False) -> list[str]:
    """Captions of images (N, C, S, S) in [-1, 1] at the captioner's size: greedy (``beam_width`` 1) or
    beam search, ``batch_size`` images at a time, with a progress bar over images."""
    C, S = model.cfg.in_channels, model.cfg.image_size
    if tuple(images.shape[1:]) != (C, S, S):
        raise ValueError(f"the captioner reads {C}-channel {S} px images, got "
                         f"{images.shape[1]}-channel {images.shape[-2]}x{images.shape[-1]}")
    out = []
    with tqdm(total=len(images), desc=f"caption ({style})", unit="img", disable=not progress) as bar:
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].float()
            out += greedy(model, x, style) if beam_width == 1 else beam(model, x, style, beam_width)
            bar.update(len(x))
    return out


def caption_checks(caption: str, image: torch.Tensor, n_objects: int) -> dict:
    """The exact reader's per-attribute checks of one caption against its image (``eval.adherence.score``),
    a caption outside the grammar failing every attribute its scene has."""
    from latentdiff.eval.adherence import score

    try:
        return score(caption, image)
    except ValueError:
        names = ["colour_0", "shape_0", "size_0"] + (["position"] if n_objects == 1 else
                                                     ["colour_1", "shape_1", "size_1", "relation"])
        return {"checks": dict.fromkeys(names + ["count"], False), "all_correct": False}


def evaluate_captioner(model: Captioner, cfg: CaptionerRunConfig, n: int = 1000, beam_width: int = 1,
                       progress: bool = True) -> dict:
    """Descriptive captions of the first n ``shapes`` test images (held-out colour-shape pairs among
    them) read back against the images: all-correct rates by the true object count, per-attribute
    accuracies, the shape accuracy of single objects of held-out and of seen colour-shape pairs,
    and examples beside the alt-text and the ground truth."""
    from latentdiff.data.shapes import HELD_OUT_PAIRS
    from latentdiff.eval.adherence import attribute_of

    test = build_dataset(cfg.data.replace(n=n), "test")
    images = test.get_batch(torch.arange(len(test)))["x"]
    captions = caption_images(model, images, "descriptive", beam_width, progress=progress)
    by_count, attributes, shape_by_pair = {1: [], 2: []}, {}, {True: [], False: []}
    for i, caption in enumerate(captions):
        objs = test.attributes[i][0]
        result = caption_checks(caption, images[i], len(objs))
        by_count[len(objs)].append(result["all_correct"])
        for check, ok in result["checks"].items():
            attributes.setdefault(attribute_of(check), []).append(ok)
        if len(objs) == 1:
            shape_by_pair[(objs[0].colour, objs[0].shape) in HELD_OUT_PAIRS].append(result["checks"]["shape_0"])
    rate = lambda v: float(np.mean(v)) if v else None  # noqa: E731
    short = caption_images(model, images[:8], "short", beam_width)
    return {"single_all_correct": rate(by_count[1]), "two_all_correct": rate(by_count[2]),
            "all_correct": rate(by_count[1] + by_count[2]),
            "attributes": {k: rate(v) for k, v in attributes.items()},
            "single_shape": {"held_out_pairs": rate(shape_by_pair[True]), "seen_pairs": rate(shape_by_pair[False])},
            "n_images": len(images),
            "n_single": len(by_count[1]), "n_two": len(by_count[2]), "beam_width": beam_width,
            "labelled_share": cfg.labelled_share,
            "examples": [{"ground_truth": test.captions[i], "alt_text": test.alt_texts[i], "descriptive": captions[i],
                          "short": short[i]} for i in range(8)]}


def recaption_dataset(captioner_ckpt: str | Path, data_cfg, style: str = "descriptive", beam_width: int = 1,
                      out: str | Path | None = None, batch_size: int = 500, progress: bool = True) -> Path:
    """Caption every training item of ``data_cfg`` with a captioner and write the captions, with their
    provenance, beside the data (``data.captions``): to ``out``, else to
    ``cache_dir()/captions/<key>.json`` keyed by the captioner's weights, style, beam and data (an
    existing file is reused). Returns the path; train with ``--set data.captions=recaption:PATH``."""
    import hashlib
    import json

    from latentdiff.data.captions import data_key, save_recaptions
    from latentdiff.eval.fd import cache_dir
    from latentdiff.io.checkpoint import weights_fingerprint

    model, cfg = load_captioner(captioner_ckpt)
    c = model.cfg
    if (data_cfg.image_size, data_cfg.channels) != (c.image_size, c.in_channels):
        raise ValueError(f"the captioner {captioner_ckpt} reads {c.in_channels}-channel {c.image_size} px images but "
                         f"the data is {data_cfg.channels}-channel {data_cfg.image_size} px")
    fingerprint = weights_fingerprint(model)
    provenance = {"captioner": str(captioner_ckpt), "fingerprint": fingerprint, "style": style,
                  "beam_width": beam_width, "data": data_key(data_cfg), "split": "train"}
    if out is None:
        key = hashlib.sha1(json.dumps(provenance | {"captioner": ""}, sort_keys=True).encode()).hexdigest()[:16]
        out = cache_dir() / "captions" / f"{key}.json"
        if out.is_file():
            return out
    train = build_dataset(data_cfg.replace(captions="exact"), "train")
    captions = []
    with tqdm(total=len(train), desc=f"recaption ({style})", unit="img", disable=not progress) as bar:
        for i in range(0, len(train), batch_size):
            x = train.get_batch(torch.arange(i, min(i + batch_size, len(train))))["x"]
            captions += caption_images(model, x, style, beam_width, batch_size)
            bar.update(len(x))
    if cfg.canonical_order:  # written left / upper object first: state half of them the other way round
        captions = restated_at_random(captions, seed=0)
        provenance["order"] = "two-object captions turned round at random (seed 0)"
    return save_recaptions(out, captions, provenance | {"n": len(captions)})


def restated_at_random(captions: list[str], seed: int) -> list[str]:
    """Each two-object caption turned round (``data.shapes.turned_caption``) with probability 1/2,
    drawn per item from a generator seeded with ``seed``: a captioner trained on one canonical order
    then leaves the text-to-image model both orders, as the data's own captions have."""
    from latentdiff.data.shapes import turned_caption

    turn = torch.rand(len(captions), generator=torch.Generator().manual_seed(seed)) < 0.5
    return [turned_caption(c) if t else c for c, t in zip(captions, turn.tolist())]
