"""``latentdiff convert SRC DST``: checkpoints between latentdiff and diffusers / original Stable
Diffusion layouts, offline (``interop.convert``)."""

from __future__ import annotations

from pathlib import Path

FORMATS = ("latentdiff", "diffusers", "single-file")


def source_format(src: Path) -> str:
    """What SRC is: a latentdiff checkpoint, a diffusers folder, or a single-file ``.safetensors``."""
    from latentdiff.io.checkpoint import resolve_checkpoint

    if src.is_file():
        return "single-file"
    if resolve_checkpoint(src) is not None:
        return "latentdiff"
    if (src / "model_index.json").is_file() or (src / "config.json").is_file():
        return "diffusers"
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist")
    raise FileNotFoundError(f"{src} is neither a latentdiff checkpoint (config.json + model.safetensors), a diffusers "
                            "folder (model_index.json, or config.json + diffusion_pytorch_model.safetensors) nor a "
                            ".safetensors file")


def cmd_convert(args) -> None:
    from latentdiff.interop import convert

    src, dst = Path(args.src), Path(args.dst)
    kind = source_format(src)
    to = args.to or ("diffusers" if kind == "latentdiff" else "latentdiff")
    if (kind == "latentdiff") == (to == "latentdiff"):
        raise ValueError(f"{src} is a {kind} checkpoint: --to {to} has nothing to convert "
                         f"({'diffusers or single-file' if kind == 'latentdiff' else 'latentdiff'} is the other side)")
    if dst.exists() and any(dst.iterdir() if dst.is_dir() else [dst]):
        raise FileExistsError(f"{dst} already exists; give a new path (nothing is overwritten)")
    notes: list[str] = []
    if kind == "diffusers":
        notes = convert.import_diffusers(src, dst, half=args.half, base=args.base)
    elif kind == "single-file":
        notes = convert.import_single_file(src, dst, args.config, args.prediction, half=args.half, ema=args.ema)
    elif to == "diffusers":
        convert.export_diffusers(src, dst, half=args.half, ema=args.ema)
    else:
        convert.export_single_file(src, dst, half=args.half, ema=args.ema)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {dst} ({to})")
    if to == "latentdiff":
        print(f"sample it with: latentdiff sample {dst} --prompt \"...\"  "
              "(or without --prompt for an unconditional model)")


def add_convert_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert checkpoints between latentdiff, diffusers folders and original "
                       "Stable Diffusion single files (offline)")
    p.add_argument("src", help="a latentdiff checkpoint, a diffusers pipeline or model folder, or a .safetensors file")
    p.add_argument("dst", help="where to write (a new path)")
    p.add_argument("--to", choices=FORMATS, help="the target layout (default: latentdiff for a diffusers or "
                   "single-file source, diffusers for a latentdiff one)")
    p.add_argument("--half", action="store_true", help="write float16 weights")
    p.add_argument("--ema", action="store_true", help="use the EMA weights (import: model_ema of a single file; "
                   "export: the checkpoint's EMA)")
    p.add_argument("--config", metavar="DIR", help="single-file import: a diffusers Stable Diffusion folder whose "
                   "configs and tokenizer are used (not its weights): text_encoder/ + tokenizer/ are needed for a text "
                   "model; unet/, vae/, scheduler/ where present (else inferred from the shapes)")
    p.add_argument("--prediction", choices=("eps", "v"), help="single-file import: what the U-Net predicts "
                   "(default: the --config scheduler's, else eps as SD 1.x)")
    p.add_argument("--base", metavar="CKPT", help="diffusers ControlNetModel import: the base checkpoint it controls")
    p.set_defaults(func=cmd_convert)
