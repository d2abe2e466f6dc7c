"""``latentdiff sample BASE --upscaler SR [--upscaler SR2 ...]`` and ``latentdiff upscale SR image.png``:
the cascade's commands (pipelines/cascade.py)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


def add_cascade_args(p: argparse.ArgumentParser) -> None:
    """``sample``'s cascade flags: each per-stage flag once for all stages or once per --upscaler."""
    p.add_argument("--upscaler", action="append", metavar="SR", help="cascade: a super-resolution checkpoint "
                   "applied to the samples (repeat for more stages, in order: 32 -> 64 -> 128 ...)")
    p.add_argument("--sr-sampler", action="append", metavar="NAME", help="cascade: each stage's sampler (one for "
                   "all or one per --upscaler; default: the upscaler's sample.sampler)")
    p.add_argument("--sr-steps", action="append", type=int, metavar="N", help="cascade: each stage's steps "
                   "(default: the upscaler's sample.steps)")
    p.add_argument("--sr-guidance", action="append", type=float, metavar="W", help="cascade: each stage's "
                   "classifier-free guidance on the text (default: the upscaler's sample.guidance)")
    p.add_argument("--aug-level", action="append", type=float, metavar="S", help="cascade: each stage's noise "
                   "augmentation of its low-res input, in [0, 1] (default: the upscaler's superres.aug_level)")
    p.add_argument("--stages-out", metavar="PREFIX", help="cascade: also write every stage's grid as "
                   "PREFIX_stage<k>_<size>px.png (stage 0: the base model)")


def per_stage(flag: str, values: list | None, k: int) -> list:
    """One value per stage: none given -> None each; one -> the same for all; else exactly k."""
    if not values:
        return [None] * k
    if len(values) == 1:
        return values * k
    if len(values) != k:
        raise ValueError(f"{flag}: give one value for all upscalers or one per --upscaler ({k}); got {len(values)}")
    return list(values)


def stage_options(args) -> list[dict]:
    """The sampling options of each --upscaler, checked before anything is loaded."""
    from latentdiff.sampling import SAMPLERS

    k = len(args.upscaler)
    samplers = per_stage("--sr-sampler", args.sr_sampler, k)
    steps = per_stage("--sr-steps", args.sr_steps, k)
    guidance = per_stage("--sr-guidance", args.sr_guidance, k)
    levels = per_stage("--aug-level", args.aug_level, k)
    for name in samplers:
        if name is not None and name not in SAMPLERS:
            raise ValueError(f"--sr-sampler {name!r} is not a sampler; valid: {', '.join(sorted(SAMPLERS))}")
    for n in steps:
        if n is not None and n < 1:
            raise ValueError(f"--sr-steps must be at least 1, got {n}")
    for w in guidance:
        if w is not None and not (math.isfinite(w) and w >= 0):
            raise ValueError(f"--sr-guidance must be a finite number >= 0, got {w}")
    for s in levels:
        if s is not None and not 0 <= s <= 1:
            raise ValueError(f"--aug-level must be in [0, 1], got {s}")
    return [dict(sampler=a, steps=b, guidance=c, aug_level=d) for a, b, c, d in zip(samplers, steps, guidance, levels)]


def sample_cascade(args, denoiser, autoencoder, cfg, labels, prompts, shown, sampling: dict) -> None:
    """``sample BASE --upscaler SR ...``: the base's samples through every stage; the last stage's grid
    to --out, every stage's to --stages-out."""
    from latentdiff.io.images import save_grid, save_prompt_rows
    from latentdiff.pipelines.cascade import load_upscaler, run_cascade

    options = stage_options(args)
    stages = [load_upscaler(path, use_ema=not args.no_ema, **o) for path, o in zip(args.upscaler, options)]
    n = len(prompts) if prompts else args.n
    outputs = run_cascade(denoiser, cfg, stages, n, prompts=prompts, class_labels=labels, autoencoder=autoencoder,
                          seed=args.seed, base_sampling=sampling, progress=True)
    paths = [(args.out, outputs[-1])]
    if args.stages_out:
        paths += [(f"{args.stages_out}_stage{k}_{images.shape[-1]}px.png", images) for k, images in enumerate(outputs)]
    from latentdiff.cli.main import png_parameters

    for path, images in paths:
        meta = png_parameters(args, sampling, images, prompt="\n".join(shown or []), prompts=shown,
                              upscalers=list(args.upscaler), stages=options)
        if shown is not None and len(shown) > 1:
            save_prompt_rows(images, shown, path, parameters=meta, config=cfg.to_dict())
        else:
            save_grid(images, path, nrow=args.nrow, caption=shown[0] if shown else None, parameters=meta,
                      config=cfg.to_dict())
        print(f"wrote {path} ({len(images)} images, {images.shape[-1]} px)")


def cmd_upscale(args) -> None:
    """``upscale SR image.png --out big.png``: a user's image through one upscaler."""
    from latentdiff.cli.checks import check_output_path, read_user_image
    from latentdiff.io.images import save_grid, save_image
    from latentdiff.pipelines.cascade import load_upscaler, upscale_image

    args.upscaler = [args.ckpt]
    args.sr_sampler, args.sr_steps = [args.sampler] if args.sampler else None, [args.steps] if args.steps else None
    args.sr_guidance = None if args.guidance is None else [args.guidance]
    args.aug_level = None if args.aug_level is None else [args.aug_level]
    (options,) = stage_options(args)
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    check_output_path("--out", args.out)
    stage = load_upscaler(args.ckpt, use_ema=not args.no_ema, **options)
    channels = stage.cfg.model.in_channels
    image = read_user_image(args.image, channels, None, f"this {channels}-channel upscaler")
    if stage.cfg.text is None and args.prompt:
        sys.exit(f"{args.ckpt} is not text-conditioned: --prompt needs a text-conditioned upscaler")
    images, note = upscale_image(stage, image, args.prompt, n=args.n, seed=args.seed, progress=True)
    print(f"note: {note}", file=sys.stderr)
    if args.n == 1:
        save_image(images[0], args.out)
    else:
        save_grid(images, args.out, caption=f"{args.n} upscales of {Path(args.image).name}")
    print(f"wrote {args.out} ({images.shape[-2]}x{images.shape[-1]})")


def add_upscale_parser(sub, sampling_args) -> None:
    p = sub.add_parser("upscale", help="upscale your own image with a super-resolution checkpoint "
                       "(images smaller than its input are padded, larger ones tiled)")
    p.add_argument("ckpt", help="a super-resolution checkpoint (RUN/checkpoint of shapes64-sr, photo-sr4, ...)")
    p.add_argument("image", help="the image file to upscale (any size; converted to the upscaler's channels)")
    p.add_argument("--out", default="upscaled.png", help="the PNG file to write")
    p.add_argument("--prompt", help="text-conditioned upscalers: the image's caption (default: none)")
    p.add_argument("--aug-level", type=float, help="noise augmentation of the input, in [0, 1] (default: the "
                   "upscaler's superres.aug_level)")
    p.add_argument("--n", type=int, default=1, help="samples (> 1: a grid of them)")
    sampling_args(p)
    p.set_defaults(func=cmd_upscale)
