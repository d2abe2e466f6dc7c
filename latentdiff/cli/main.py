"""``latentdiff {train,sample,upscale,eval,demo,presets,config,samplers,bench,convert,serve,prepare}``:
parse -> config -> one library call."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_presets(args) -> None:
    from latentdiff.presets import describe_presets

    for name, description in describe_presets():
        print(f"{name:20s} {description}")


def cmd_config(args) -> None:
    """Every key of a preset (after ``--set``), dotted, with its value and what it means."""
    from latentdiff.config import apply_overrides, describe_keys
    from latentdiff.presets import get_preset

    rows = [(key, json.dumps(value), text) for key, value, text in
            describe_keys(apply_overrides(get_preset(args.preset), args.set or []))]
    width = max(len(k) + len(v) for k, v, _ in rows) + 3
    for key, value, text in rows:
        print(f"{key} = {value}".ljust(width) + (f"  # {text}" if text else ""))


def cmd_samplers(args) -> None:
    """Each sampler and sigma spacing by name, one line each."""
    from latentdiff.sampling import describe_samplers, describe_spacings

    print("samplers (--sampler, sample.sampler):")
    for name, text in describe_samplers():
        print(f"  {name:14s} {text}")
    print("spacings (--spacing, sample.spacing):")
    for name, text in describe_spacings():
        print(f"  {name:14s} {text}")


def cmd_train(args) -> None:
    import contextlib

    from latentdiff.cli.train_args import replace_run, train_config
    from latentdiff.pipelines import train_autoencoder_run, train_controlnet_run, train_run
    from latentdiff.pipelines.clip import train_clip_run
    from latentdiff.pipelines.dmd import train_dmd_run
    from latentdiff.pipelines.captioning import train_captioner_run
    from latentdiff.pipelines.lora import train_lora_run
    from latentdiff.pipelines.unclip import train_prior_run
    from latentdiff.presets.lora import LoRARunConfig
    from latentdiff.presets import (AutoencoderRunConfig, CaptionerRunConfig, CLIPRunConfig, ControlNetRunConfig,
                                    DMDRunConfig, PriorRunConfig)
    from latentdiff.training import run_lock

    with run_lock(args.out) if args.force else contextlib.nullcontext():  # --force: held from the move on
        if args.force:
            replace_run(Path(args.out))
        cfg = train_config(args)
        train = {AutoencoderRunConfig: train_autoencoder_run, ControlNetRunConfig: train_controlnet_run,
                 DMDRunConfig: train_dmd_run, CLIPRunConfig: train_clip_run,
                 PriorRunConfig: train_prior_run, CaptionerRunConfig: train_captioner_run,
                 LoRARunConfig: train_lora_run}.get(type(cfg), train_run)
        summary = train(cfg, args.out)
    print(json.dumps(summary))


def sampling_options(args, s) -> dict:
    """generate()'s sampler, steps, spacing, guidance, threshold and percentile: each flag given on the
    command line (0 and "" included, so that they are checked, not replaced), else the run's default ``s``."""
    names = ("sampler", "steps", "spacing", "guidance", "threshold", "percentile")
    return {name: getattr(s, name) if getattr(args, name) is None else getattr(args, name) for name in names}


def png_parameters(args, options: dict, images, **fields) -> dict:
    """The request that made ``images`` (N, C, H, W), for the PNG's metadata (io.png_meta): the sampling
    ``options`` as used, the seed, one image's size, the model (the run folder's name for RUN/checkpoint)
    and ``fields`` (prompt, class_label, ...); None values are left out of the ``parameters`` text."""
    ckpt = Path(args.ckpt).resolve()
    model = ckpt.parent.name if ckpt.name == "checkpoint" else ckpt.name
    return {"negative_prompt": args.negative_prompt or None, **options, "seed": args.seed,
            "size": f"{images.shape[-1]}x{images.shape[-2]}", "model": model, "n": len(images), **fields}


def cmd_sample(args) -> None:
    from latentdiff.cli.cascade import stage_options
    from latentdiff.cli.checks import check_sampling_args, check_output_path, prompt_rows

    check_sampling_args(args)  # before anything is loaded
    if args.upscaler:
        stage_options(args)
        check_output_path("--stages-out", args.stages_out and args.stages_out + "_stage0.png")
    import torch

    from latentdiff.data import grid_prompts
    from latentdiff.io.images import TrajectoryStrip, save_grid, save_prompt_rows
    from latentdiff.pipelines import Conditioning, generate, text_encoder_for
    from latentdiff.pipelines.controlnet import base_of

    if args.prior:
        from latentdiff.cli.unclip import sample_unclip

        return sample_unclip(args, {k: getattr(args, k) for k in ("sampler", "steps", "spacing", "guidance",
                                                                  "threshold", "percentile")})
    base, controlnets = base_of(args.ckpt)
    if controlnets or args.controlnet or args.control:
        return sample_controlled(args, base, controlnets + list(args.controlnet or []))
    from latentdiff.pipelines.lora import load_model_with_adapters

    denoiser, autoencoder, cfg = load_model_with_adapters(args.ckpt, args.lora or [], use_ema=not args.no_ema,
                                                          merge=args.merge_lora)
    s = cfg.sample
    labels = None
    if args.class_label is not None:
        from latentdiff.data.resolve import class_index

        labels = torch.full((args.n,), class_index(cfg, args.class_label))  # a name or an index
    elif cfg.model.num_classes:
        labels = torch.arange(args.n) % cfg.model.num_classes
    prompts, shown = None, None
    if cfg.text is not None:
        shown = [args.prompt] if args.prompt is not None else prompt_rows(grid_prompts(cfg.data), args.n)
        prompts = [p for p in shown for _ in range(args.n // len(shown))]  # exactly n
        if args.upsample_prompt:
            from latentdiff.cli.captioning import upsampled

            prompts = upsampled(args.upsample_prompt, prompts, args.seed)
    elif args.prompt is not None or args.upsample_prompt:
        sys.exit(f"{args.ckpt} is not a text-to-image model: --prompt and --upsample-prompt need one")
    if args.upscaler:
        from latentdiff.cli.cascade import sample_cascade

        return sample_cascade(args, denoiser, autoencoder, cfg, labels, prompts, shown, sampling_options(args, s))
    strip = TrajectoryStrip(rows=min(len(prompts or range(args.n)), 8)) if args.trajectory else None
    images = generate(denoiser, len(prompts) if prompts else args.n,
                      Conditioning(class_labels=labels, prompts=prompts, negative_prompt=args.negative_prompt,
                                   text_encoder=text_encoder_for(cfg)),
                      **sampling_options(args, s), seed=args.seed, progress=True, callback=strip,
                      autoencoder=autoencoder)
    meta = png_parameters(args, sampling_options(args, s), images, prompt="\n".join(shown or []),
                          prompts=shown, class_label=args.class_label, lora=args.lora or None)
    if shown is not None and len(shown) > 1:
        save_prompt_rows(images, shown, args.out, parameters=meta, config=cfg.to_dict())
    else:
        nrow = args.nrow or (cfg.model.num_classes if labels is not None and args.class_label is None else None)
        save_grid(images, args.out, nrow=nrow, caption=shown[0] if shown else None, parameters=meta,
                  config=cfg.to_dict())
    print(f"wrote {args.out} ({len(images)} images)")
    if strip is not None:
        strip.save(args.trajectory)
        print(f"wrote {args.trajectory} (x0 predictions of {strip.rows} samples at {len(strip.sigmas)} steps)")


def sample_controlled(args, base: str | None, controlnets: list[str]) -> None:
    """``sample CKPT --control IMG [--controlnet CN ...]``: one control image per ControlNet."""
    import torch

    from latentdiff.io.images import save_grid
    from latentdiff.pipelines import Conditioning, generate, load_controlled, prepare_control, read_control_image, text_encoder_for
    from latentdiff.pipelines.controlnet import control_images

    if not controlnets:
        sys.exit("--control needs a ControlNet: --controlnet CN (or a ControlNet checkpoint as CKPT)")
    controls = list(args.control or [])
    if len(controls) != len(controlnets):
        sys.exit(f"{len(controlnets)} ControlNet(s) need as many --control images, got {len(controls)}")
    scales = list(args.control_scale or [1.0])
    scales = scales * len(controlnets) if len(scales) == 1 else scales
    if len(scales) != len(controlnets):
        sys.exit(f"give one --control-scale, or one per ControlNet ({len(controlnets)}); got {len(scales)}")
    denoiser, autoencoder, cfg, cn_cfgs = load_controlled(base, controlnets, guess_mode=args.guess_mode,
                                                          use_ema=not args.no_ema)
    control = torch.cat([prepare_control(read_control_image(path), c.controlnet, name=path)
                         for path, c in zip(controls, cn_cfgs)], dim=1)
    s = cn_cfgs[0].sample
    prompts = None if args.guess_mode or cfg.text is None else [args.prompt or ""] * args.n
    if args.prompt is not None and cfg.text is None:
        sys.exit(f"the base model {base or cn_cfgs[0].base} is not a text-to-image model: --prompt needs one")
    images = generate(denoiser, args.n,
                      Conditioning(prompts=prompts, negative_prompt=args.negative_prompt,
                                   text_encoder=text_encoder_for(cfg) if prompts else None,
                                   control=control.expand(args.n, -1, -1, -1), control_scale=scales,
                                   control_steps=(args.control_start, args.control_end)),
                      **sampling_options(args, s), seed=args.seed, progress=True, autoencoder=autoencoder)
    shown = torch.cat([control_images(c[None], images.shape[1]) for c in control[0].split(1)])
    mode = "guess mode" if args.guess_mode else repr(args.prompt or "")
    meta = png_parameters(args, sampling_options(args, s), images, prompt=args.prompt or "", control_scale=scales,
                          controlnets=[str(c) for c in controlnets], control_start=args.control_start,
                          control_end=args.control_end, guess_mode=args.guess_mode)
    save_grid(torch.cat([shown, images]), args.out, nrow=args.nrow,
              caption=f"control(s) first, then samples; {mode}, scales {scales}", parameters=meta,
              config=cfg.to_dict())
    print(f"wrote {args.out} ({len(images)} images after {len(shown)} control picture(s))")


def cmd_demo(args) -> None:
    from latentdiff.cli.checks import write_json
    from latentdiff.cli.demo import run_demo

    report = run_demo(args.out, minutes=args.minutes, n_eval=args.n_eval)
    print(json.dumps(report, indent=2))
    write_json(args.json, report)


def cmd_bench(args) -> None:
    from latentdiff.bench import run_from_args

    try:
        run_from_args(args)
    except ImportError as err:
        sys.exit(f"latentdiff bench: {err}")


DESCRIPTION = ("latentdiff trains diffusion models on one machine (pixel and latent DDPMs, text-to-image, "
               "ControlNet, one-step students) and samples and evaluates them; `latentdiff COMMAND --help` "
               "explains each command, `latentdiff presets` lists what can be trained.")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown as "(default: X)", except where the help already says its default, or there
    is none to show (None, a store_true flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose sub-parsers (made with ``type(self)``) share the help formatter."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", help="sampler name (default: the run's sample.sampler); `latentdiff samplers` "
                   "lists them")
    p.add_argument("--steps", type=int, help="number of sampling steps, >= 1 and at least the sampler's order "
                   "(default: the run's sample.steps)")
    p.add_argument("--spacing", help="sigma spacing: leading | trailing | linspace | karras | logsnr | balanced | fitted "
                   "(fitted to this model on a pilot batch first; default: the run's sample.spacing)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale, finite and >= 0; 1 = none "
                   "(default: the run's sample.guidance)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled noise (the same images on CPU and GPU)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")


def _controlnet_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--controlnet", action="append", metavar="CN", help="a ControlNet checkpoint trained on CKPT's "
                   "U-Net (repeat for several; their residuals are summed with their scales)")


def build_parser() -> argparse.ArgumentParser:
    from latentdiff.cli.cascade import add_cascade_args, add_upscale_parser
    from latentdiff.cli.captioning import add_recaption_parser
    from latentdiff.cli.convert import add_convert_parser
    from latentdiff.cli.evaluate import add_eval_parser
    from latentdiff.cli.unclip import add_prior_args, add_unclip_parsers

    parser = _Parser(prog="latentdiff", description=DESCRIPTION)
    parser.add_argument("--debug", action="store_true", help="print the full traceback of an error "
                        "(also LATENTDIFF_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list the presets", description="List the presets, one line each.")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("config", help="print every config key of a preset with its value and meaning",
                       description="Print every config key of PRESET (dotted, as --set takes it) with its value "
                       "and a one-line description.")
    p.add_argument("preset", help="preset name (`latentdiff presets` lists them)")
    p.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE",
                   help="show the config with these overrides applied, e.g. --set train.lr=1e-3")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("samplers", help="list the samplers and sigma spacings, one line each",
                       description="List the samplers (--sampler) and sigma spacings (--spacing), one line each.")
    p.set_defaults(func=cmd_samplers)

    p = sub.add_parser("train", help="train a preset into a run folder (resumes if it has a checkpoint)")
    p.add_argument("--preset", help="what to train: `latentdiff presets` lists them, `latentdiff config PRESET` "
                   "shows every key; not needed to resume: `train --out RUN` continues RUN with its own config")
    p.add_argument("--force", action="store_true", help="the folder holds a run of another preset: move it aside "
                   "into RUN/replaced-<time>/ and start this one")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE",
                   help="override config fields, e.g. --set train.lr=1e-3 train.max_steps=500")
    p.add_argument("--init-from", metavar="CKPT", help="start a fresh run from this checkpoint's weights (its EMA "
                   "where it has one); sets train.init_from")
    p.add_argument("--minutes", type=float, help="training-time budget (sets train.max_minutes)")
    p.add_argument("--data", metavar="DIR", help="train on a folder of images (sets data.name=folder, "
                   "data.root=DIR): class subfolders -> labels, <stem>.txt or metadata.jsonl -> captions, "
                   "channels and class names from the images (README, Train on your own images)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="sample a grid from a checkpoint")
    p.add_argument("ckpt", help="checkpoint directory (RUN/checkpoint)")
    p.add_argument("--n", type=int, default=64, help="number of images, >= 1")
    p.add_argument("--out", default="samples.png", help="the PNG file to write (its folder is created)")
    p.add_argument("--nrow", type=int, help="images per grid row (default: the class count for a class grid, "
                   "else about the square root of --n)")
    p.add_argument("--class-label", metavar="NAME|INDEX", help="sample one class, by name (the class folder's "
                   "name) or index (default: all classes in turn)")
    p.add_argument("--trajectory", metavar="PNG", help="also save the x0 prediction of each step (a row per sample)")
    p.add_argument("--prompt", help="text-to-image: the prompt (default: the run's grid prompts, a row each, "
                   "exactly --n images: as many prompts (at most 10) as divide --n evenly)")
    p.add_argument("--upsample-prompt", metavar="UPSAMPLER", help="text-to-image: rewrite each prompt with this "
                   "prompt upsampler (DALL·E 3), one sampled rewrite per image")
    p.add_argument("--negative-prompt", default="", help="text-to-image: what guidance steers away from "
                   "(default: the empty prompt, i.e. the unconditional model)")
    p.add_argument("--threshold", choices=("none", "static", "dynamic"), help="clip x0 predictions (pixel models; "
                   "default: the run's sample.threshold)")
    p.add_argument("--percentile", type=float, help="dynamic thresholding's percentile p, in (0, 1] "
                   "(default: the run's sample.percentile)")
    p.add_argument("--control", action="append", metavar="IMG", help="ControlNet: a control image (edges, mask), "
                   "one per --controlnet, in their order")
    p.add_argument("--control-scale", action="append", type=float, metavar="S",
                   help="ControlNet: the residual scale, one for all or one per --controlnet (default 1)")
    p.add_argument("--guess-mode", action="store_true", help="ControlNet: no prompt; the control alone, "
                   "guided against the base model without control")
    p.add_argument("--control-start", type=float, default=0.0, help="ControlNet: first step fraction controlled, "
                   "in [0, 1)")
    p.add_argument("--control-end", type=float, default=1.0, help="ControlNet: last step fraction controlled, "
                   "in (0, 1]")
    _controlnet_arg(p)
    p.add_argument("--lora", action="append", metavar="PATH[:SCALE]", help="a LoRA adapter (a LoRA run's "
                   "checkpoint) trained on CKPT, its update scaled by SCALE (default 1); repeat for several")
    p.add_argument("--merge-lora", action="store_true", help="fold the LoRA adapters into the weights before "
                   "sampling (one network, as fast as the base)")
    add_cascade_args(p)
    add_prior_args(p)
    _sampling_args(p)
    p.set_defaults(func=cmd_sample)
    add_upscale_parser(sub, _sampling_args)
    add_unclip_parsers(sub, _sampling_args)
    add_recaption_parser(sub)
    add_convert_parser(sub)
    from latentdiff.cli.prepare import add_prepare_parser
    add_prepare_parser(sub)
    from latentdiff.cli.serve import add_serve_parser
    add_serve_parser(sub)

    add_eval_parser(sub, _sampling_args, _controlnet_arg)

    p = sub.add_parser("demo", help="train, sample and evaluate the Fashion-MNIST DDPM in minutes")
    p.add_argument("--out", default="demo_out", help="run folder")
    p.add_argument("--minutes", type=float, default=12.0, help="training-time budget in minutes")
    p.add_argument("--n-eval", type=int, default=1000, help="samples (and real images) for FD-EffNet")
    p.add_argument("--json", help="also write the report here")
    p.set_defaults(func=cmd_demo)

    from latentdiff.bench import add_arguments
    p = sub.add_parser("bench", help="latentdiff vs diffusers on the same U-Nets: training steps/s, forward, "
                       "sampling, peak memory (needs diffusers; README, Performance)")
    add_arguments(p, configs="S,L", rounds=2, precision="fp32")
    p.set_defaults(func=cmd_bench)
    for choice in sub._choices_actions:  # `latentdiff CMD --help` opens with the line `latentdiff --help` shows
        command = sub.choices[choice.dest]
        if command.description is None and choice.help:
            command.description = choice.help[0].upper() + choice.help[1:] + "."
    return parser


def main(argv: list[str] | None = None) -> None:
    from latentdiff.cli.errors import run_command

    args = build_parser().parse_args(argv)
    run_command(lambda: args.func(args), args.command, debug=args.debug)


if __name__ == "__main__":
    main()
