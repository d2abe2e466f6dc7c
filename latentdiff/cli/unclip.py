"""unCLIP's commands (pipelines/unclip.py): ``sample DECODER --prior PRIOR --prompt ...`` (text -> prior
-> decoder), ``vary DECODER image.png --n 8`` (image variations) and ``interpolate DECODER a.png b.png``
(a strip along the spherical path between two images' CLIP embeddings)."""

from __future__ import annotations

import argparse


def add_prior_args(p: argparse.ArgumentParser) -> None:
    """``sample``'s unCLIP flags."""
    p.add_argument("--prior", metavar="PRIOR", help="unCLIP: a diffusion prior checkpoint; CKPT is then an unCLIP "
                   "decoder trained on the same CLIP model, and each prompt goes text -> prior -> decoder")
    p.add_argument("--prior-steps", type=int, metavar="N", help="unCLIP: the prior's sampling steps "
                   "(default: its sample.steps)")
    p.add_argument("--prior-guidance", type=float, metavar="W", help="unCLIP: the prior's classifier-free "
                   "guidance (default: its sample.guidance)")
    p.add_argument("--candidates", type=int, metavar="K", help="unCLIP: image embeddings the prior draws per "
                   "prompt, the one most similar to the prompt kept (default: its candidates, 2)")
    p.add_argument("--no-captions", action="store_true", help="unCLIP: the decoder reads the image embedding "
                   "alone, not the prompt too")


def sample_unclip(args, sampling: dict) -> None:
    """``sample DECODER --prior PRIOR``: the prompts (--prompt, or the grid prompts) through the prior,
    then the decoder; a row per prompt."""
    from latentdiff.cli.checks import prompt_rows
    from latentdiff.data import grid_prompts
    from latentdiff.io.images import save_grid, save_prompt_rows
    from latentdiff.pipelines.unclip import Decoder, text_to_image

    for flag, value in (("--prior-steps", args.prior_steps), ("--candidates", args.candidates)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    decoder = Decoder(args.ckpt, use_ema=not args.no_ema)
    shown = [args.prompt] if args.prompt is not None else prompt_rows(grid_prompts(decoder.cfg.data), args.n)
    prompts = [p for p in shown for _ in range(args.n // len(shown))]
    prior_sampling = dict(steps=args.prior_steps, guidance=args.prior_guidance, candidates=args.candidates)
    images, _ = text_to_image(decoder, args.prior, prompts, seed=args.seed, captions=not args.no_captions,
                              progress=True, prior_sampling=prior_sampling, **sampling)
    from latentdiff.cli.main import png_parameters

    meta = png_parameters(args, sampling, images, prompt="\n".join(shown), prompts=shown, prior=args.prior,
                          prior_sampling=prior_sampling)
    if len(shown) > 1:
        save_prompt_rows(images, shown, args.out, parameters=meta, config=decoder.cfg.to_dict())
    else:
        save_grid(images, args.out, nrow=args.nrow, caption=shown[0], parameters=meta, config=decoder.cfg.to_dict())
    print(f"wrote {args.out} ({len(images)} images)")


def _decoder_image(decoder, path: str):
    from latentdiff.cli.checks import read_user_image

    size = decoder.clip_cfg.clip.image_size
    return read_user_image(path, decoder.clip_cfg.clip.in_channels, size, f"the decoder's CLIP model ({size} px)")


def cmd_vary(args) -> None:
    """``vary DECODER image.png [more.png ...] --n 8``: a row of n variations per image, the source first."""
    import torch

    from latentdiff.cli.checks import check_sampling_args
    from latentdiff.io.images import save_grid
    from latentdiff.nn.superres import resample
    from latentdiff.pipelines.unclip import Decoder

    check_sampling_args(args)
    decoder = Decoder(args.ckpt, use_ema=not args.no_ema)
    sources = torch.cat([_decoder_image(decoder, path) for path in args.images])
    sampling = dict(sampler=args.sampler, steps=args.steps, spacing=args.spacing, guidance=args.guidance)
    variations = decoder.vary(sources, args.n, seed=args.seed, progress=True, **sampling)
    size, channels = variations.shape[-1], variations.shape[1]
    shown = resample(sources, size).clamp(-1, 1)
    shown = shown if shown.shape[1] == channels else shown.mean(1, keepdim=True).expand(-1, channels, -1, -1)
    rows = torch.cat([torch.cat([s[None], variations[i * args.n:(i + 1) * args.n]]) for i, s in enumerate(shown)])
    save_grid(rows, args.out, nrow=args.n + 1, caption="first column: the source; then its variations")
    print(f"wrote {args.out} ({len(sources)} source(s) x {args.n} variations)")


def cmd_interpolate(args) -> None:
    """``interpolate DECODER a.png b.png --k 8``: a strip of k images from a's embedding to b's."""
    from latentdiff.cli.checks import check_sampling_args
    from latentdiff.io.images import save_grid
    from latentdiff.pipelines.unclip import Decoder

    check_sampling_args(args)
    if args.k < 2:
        raise ValueError(f"--k must be at least 2 (the two ends), got {args.k}")
    decoder = Decoder(args.ckpt, use_ema=not args.no_ema)
    a, b = (_decoder_image(decoder, path)[0] for path in (args.image_a, args.image_b))
    sampling = dict(sampler=args.sampler, steps=args.steps, spacing=args.spacing, guidance=args.guidance)
    strip = decoder.interpolate(a, b, args.k, seed=args.seed, **sampling)
    save_grid(strip, args.out, nrow=args.k, caption=f"slerp from {args.image_a} to {args.image_b}")
    print(f"wrote {args.out} ({args.k} images)")


def add_unclip_parsers(sub, sampling_args) -> None:
    p = sub.add_parser("vary", help="unCLIP image variations: encode images with the decoder's CLIP image tower "
                       "and decode them with new noise")
    p.add_argument("ckpt", help="an unCLIP decoder checkpoint (RUN/checkpoint of fmnist-unclip-decoder, ...)")
    p.add_argument("images", nargs="+", help="image files (converted and resized to what the CLIP model reads, "
                   "with a note)")
    p.add_argument("--n", type=int, default=8, help="variations per image")
    p.add_argument("--out", default="variations.png", help="the PNG file to write (a row per image)")
    sampling_args(p)
    p.set_defaults(func=cmd_vary)

    p = sub.add_parser("interpolate", help="unCLIP: decode the spherical path between two images' CLIP "
                       "embeddings into a strip, every frame from the same noise")
    p.add_argument("ckpt", help="an unCLIP decoder checkpoint")
    p.add_argument("image_a", help="the first image file")
    p.add_argument("image_b", help="the second image file")
    p.add_argument("--k", type=int, default=8, help="images in the strip, the two ends included")
    p.add_argument("--out", default="interpolation.png", help="the PNG file to write")
    sampling_args(p)
    p.set_defaults(func=cmd_interpolate)
