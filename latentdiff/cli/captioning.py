"""``latentdiff recaption CAPTIONER``: a captioner's captions of a run's training set, written beside
the data for ``--set data.captions=recaption:PATH`` (pipelines/captioning.py)."""

from __future__ import annotations


def cmd_recaption(args) -> None:
    from latentdiff.cli.checks import check_output_path
    from latentdiff.config import apply_overrides
    from latentdiff.pipelines.captioning import load_captioner, recaption_dataset
    from latentdiff.presets import get_preset

    check_output_path("--out", args.out)
    if args.beam < 1:
        raise ValueError(f"--beam must be at least 1, got {args.beam}")
    if args.preset:
        data = apply_overrides(get_preset(args.preset), args.set or []).data
    else:
        _, cfg = load_captioner(args.ckpt)
        data = apply_overrides(cfg, args.set or []).data
    path = recaption_dataset(args.ckpt, data.replace(captions="exact"), args.style, args.beam, args.out)
    print(f"wrote {path}\ntrain on it with: --set data.captions=recaption:{path}")


def upsampled(upsampler_ckpt: str, prompts: list[str], seed: int) -> list[str]:
    """``sample --upsample-prompt UPSAMPLER``: each prompt rewritten (one sampled draw per image),
    the rewrites printed."""
    import sys

    from latentdiff.pipelines.captioning import load_upsampler, upsample_prompts

    model, _ = load_upsampler(upsampler_ckpt)
    rewritten = upsample_prompts(model, prompts, seed=seed)
    for short, long in list(dict.fromkeys(zip(prompts, rewritten)))[:16]:
        print(f"upsampled: {short!r} -> {long!r}", file=sys.stderr)
    return rewritten


def add_recaption_parser(sub) -> None:
    p = sub.add_parser("recaption", help="DALL·E 3: caption a training set with a captioner, for "
                       "--set data.captions=recaption:PATH")
    p.add_argument("ckpt", help="a captioner checkpoint (RUN/checkpoint of shapes-captioner)")
    p.add_argument("--preset", help="the text-to-image preset whose training data to caption (default: the "
                   "captioner's own data)")
    p.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE", help="overrides of that preset "
                   "(or of the captioner's config), e.g. --set data.n=5000")
    p.add_argument("--style", choices=("descriptive", "short"), default="descriptive", help="the caption style")
    p.add_argument("--beam", type=int, default=1, help="beam width (1: greedy decoding)")
    p.add_argument("--out", help="the JSON file to write (default: the cache, keyed by captioner, style and data)")
    p.set_defaults(func=cmd_recaption)
