"""``latentdiff {train,sample,eval,demo,presets}``: parse -> config -> one library call."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _write_json(path: str | None, data: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2))


def cmd_presets(args) -> None:
    from latentdiff.presets import describe_presets

    for name, description in describe_presets():
        print(f"{name:20s} {description}")


def cmd_train(args) -> None:
    from latentdiff.config import apply_overrides
    from latentdiff.pipelines import train_autoencoder_run, train_controlnet_run, train_run
    from latentdiff.pipelines.dmd import train_dmd_run
    from latentdiff.presets import AutoencoderRunConfig, ControlNetRunConfig, DMDRunConfig, get_preset

    cfg = apply_overrides(get_preset(args.preset), args.set or [])
    if args.minutes is not None:
        cfg = cfg.replace(train=cfg.train.replace(max_minutes=args.minutes))
    train = {AutoencoderRunConfig: train_autoencoder_run, ControlNetRunConfig: train_controlnet_run,
             DMDRunConfig: train_dmd_run}.get(type(cfg), train_run)
    summary = train(cfg, args.out)
    print(json.dumps(summary))


def cmd_sample(args) -> None:
    import torch

    from latentdiff.data import grid_prompts
    from latentdiff.io.images import TrajectoryStrip, save_grid, save_prompt_rows
    from latentdiff.pipelines import generate, load_model, text_encoder_for
    from latentdiff.pipelines.controlnet import base_of

    base, controlnets = base_of(args.ckpt)
    if controlnets or args.controlnet or args.control:
        return sample_controlled(args, base, controlnets + list(args.controlnet or []))
    denoiser, autoencoder, cfg = load_model(args.ckpt, use_ema=not args.no_ema)
    s = cfg.sample
    labels = None
    if cfg.model.num_classes:
        if args.class_label is not None:
            if not 0 <= args.class_label < cfg.model.num_classes:
                sys.exit(f"--class-label must be in [0, {cfg.model.num_classes - 1}]")
            labels = torch.full((args.n,), args.class_label)
        else:
            labels = torch.arange(args.n) % cfg.model.num_classes
    prompts, shown = None, None
    if cfg.text is not None:
        shown = [args.prompt] if args.prompt is not None else grid_prompts(cfg.data)
        prompts = [p for p in shown for _ in range(max(1, args.n // len(shown)))]
    elif args.prompt is not None:
        sys.exit(f"{args.ckpt} is not a text-to-image model: --prompt needs one")
    strip = TrajectoryStrip(rows=min(len(prompts or range(args.n)), 8)) if args.trajectory else None
    images = generate(denoiser, len(prompts) if prompts else args.n, class_labels=labels, prompts=prompts,
                      negative_prompt=args.negative_prompt, text_encoder=text_encoder_for(cfg),
                      sampler=args.sampler or s.sampler, steps=args.steps or s.steps,
                      spacing=args.spacing or s.spacing, guidance=s.guidance if args.guidance is None else args.guidance,
                      threshold=args.threshold or s.threshold, percentile=args.percentile or s.percentile,
                      seed=args.seed, progress=True, callback=strip, autoencoder=autoencoder)
    if shown is not None and len(shown) > 1:
        save_prompt_rows(images, shown, args.out)
    else:
        nrow = args.nrow or (cfg.model.num_classes if labels is not None and args.class_label is None else None)
        save_grid(images, args.out, nrow=nrow, caption=shown[0] if shown else None)
    print(f"wrote {args.out} ({len(images)} images)")
    if strip is not None:
        strip.save(args.trajectory)
        print(f"wrote {args.trajectory} (x0 predictions of {strip.rows} samples at {len(strip.sigmas)} steps)")


def sample_controlled(args, base: str | None, controlnets: list[str]) -> None:
    """``sample CKPT --control IMG [--controlnet CN ...]``: one control image per ControlNet."""
    import torch

    from latentdiff.io.images import save_grid
    from latentdiff.pipelines import generate, load_controlled, prepare_control, read_control_image, text_encoder_for
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
    images = generate(denoiser, args.n, prompts=prompts, negative_prompt=args.negative_prompt,
                      text_encoder=text_encoder_for(cfg) if prompts else None, sampler=args.sampler or s.sampler,
                      steps=args.steps or s.steps, spacing=args.spacing or s.spacing,
                      guidance=s.guidance if args.guidance is None else args.guidance,
                      threshold=args.threshold or s.threshold, percentile=args.percentile or s.percentile,
                      seed=args.seed, progress=True, autoencoder=autoencoder, control=control.expand(args.n, -1, -1, -1),
                      control_scale=scales, control_steps=(args.control_start, args.control_end))
    shown = torch.cat([control_images(c[None], images.shape[1]) for c in control[0].split(1)])
    mode = "guess mode" if args.guess_mode else repr(args.prompt or "")
    save_grid(torch.cat([shown, images]), args.out, nrow=args.nrow,
              caption=f"control(s) first, then samples; {mode}, scales {scales}")
    print(f"wrote {args.out} ({len(images)} images after {len(shown)} control picture(s))")


def cmd_eval(args) -> None:
    from latentdiff.io.checkpoint import read_config
    from latentdiff.pipelines import evaluate_autoencoder, evaluate_model, load_autoencoder, load_model
    from latentdiff.presets import is_autoencoder_config

    if args.target[0] == "adherence":
        return eval_adherence(args)
    if args.target[0] == "control":
        return eval_control(args)
    if len(args.target) != 1:
        sys.exit("usage: latentdiff eval CKPT | latentdiff eval adherence CKPT --prompts FILE")
    ckpt = args.target[0]
    if is_autoencoder_config(read_config(ckpt)):
        autoencoder, ae_cfg = load_autoencoder(ckpt, use_ema=not args.no_ema)
        report = evaluate_autoencoder(autoencoder, ae_cfg.data, n_fd=args.n, seed=args.seed)
    else:
        denoiser, autoencoder, cfg = load_model(ckpt, use_ema=not args.no_ema)
        report, _, _ = evaluate_model(denoiser, cfg, args.n, sampler=args.sampler, steps=args.steps,
                                      spacing=args.spacing, guidance=args.guidance, seed=args.seed,
                                      autoencoder=autoencoder)
    print(json.dumps(report, indent=2))
    _write_json(args.json, report)


def eval_adherence(args) -> None:
    from latentdiff.data.shapes import held_out_prompts
    from latentdiff.io.images import save_prompt_rows
    from latentdiff.pipelines import evaluate_adherence, load_model

    if len(args.target) != 2:
        sys.exit("usage: latentdiff eval adherence CKPT --prompts FILE --n-per-prompt K --guidance G --json PATH")
    denoiser, autoencoder, cfg = load_model(args.target[1], use_ema=not args.no_ema)
    if cfg.text is None:
        sys.exit(f"{args.target[1]} is not a text-to-image model")
    if args.prompts:
        prompts = [line.strip() for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    else:
        prompts = held_out_prompts()
    report, images = evaluate_adherence(denoiser, cfg, prompts, args.n_per_prompt, guidance=args.guidance,
                                        sampler=args.sampler, steps=args.steps, spacing=args.spacing,
                                        seed=args.seed, autoencoder=autoencoder)
    print(json.dumps(report["overall"], indent=2))
    _write_json(args.json, report)
    if args.png:
        save_prompt_rows(images, prompts, args.png, title=f"guidance {report['guidance']:g}")


def eval_control(args) -> None:
    import torch

    from latentdiff.io.images import save_prompt_rows
    from latentdiff.pipelines import evaluate_control, load_controlled
    from latentdiff.pipelines.controlnet import base_of

    if len(args.target) != 2:
        sys.exit("usage: latentdiff eval control CKPT --controlnet CN --n N --seed S --json PATH")
    base, controlnets = base_of(args.target[1])
    controlnets += list(args.controlnet or [])
    if len(controlnets) != 1:
        sys.exit(f"eval control measures one ControlNet; got {len(controlnets)}")
    denoiser, autoencoder, cfg, (cn_cfg,) = load_controlled(base, controlnets, use_ema=not args.no_ema)
    report, pictures = evaluate_control(denoiser, cfg, cn_cfg, args.n, guidance=args.guidance, sampler=args.sampler,
                                        steps=args.steps, seed=args.seed, autoencoder=autoencoder)
    print(json.dumps(report, indent=2))
    _write_json(args.json, report)
    if args.png:
        k = min(8, args.n)
        save_prompt_rows(torch.cat([v[:k] for v in pictures.values()]), list(pictures), args.png,
                         title=f"held-out {cn_cfg.control.kind} controls, seed {args.seed}")


def cmd_demo(args) -> None:
    from latentdiff.cli.demo import run_demo

    report = run_demo(args.out, minutes=args.minutes, n_eval=args.n_eval)
    print(json.dumps(report, indent=2))
    _write_json(args.json, report)


def cmd_bench(args) -> None:
    from latentdiff.bench import run_from_args

    try:
        run_from_args(args)
    except ImportError as err:
        sys.exit(f"latentdiff bench: {err}")


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", help="sampler name (default: the run's); see latentdiff.sampling.SAMPLERS")
    p.add_argument("--steps", type=int, help="number of sampling steps (default: the run's)")
    p.add_argument("--spacing", help="sigma spacing: leading | trailing | linspace | karras | logsnr | balanced | fitted "
                   "(fitted to this model on a pilot batch first; see latentdiff.sampling.fitted)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")


def _controlnet_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--controlnet", action="append", metavar="CN", help="a ControlNet checkpoint trained on CKPT's "
                   "U-Net (repeat for several; their residuals are summed with their scales)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentdiff", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list the presets")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("train", help="train a preset into a run folder (resumes if it has a checkpoint)")
    p.add_argument("--preset", required=True)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. train.lr=1e-3")
    p.add_argument("--minutes", type=float, help="training-time budget (sets train.max_minutes)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="sample a grid from a checkpoint")
    p.add_argument("ckpt", help="checkpoint directory (RUN/checkpoint)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--out", default="samples.png")
    p.add_argument("--nrow", type=int)
    p.add_argument("--class-label", type=int, help="sample one class (default: all classes in turn)")
    p.add_argument("--trajectory", metavar="PNG", help="also save the x0 prediction of each step (a row per sample)")
    p.add_argument("--prompt", help="text-to-image: the prompt (default: a row per grid prompt)")
    p.add_argument("--negative-prompt", default="", help="text-to-image: what guidance steers away from "
                   "(default: the empty prompt, i.e. the unconditional model)")
    p.add_argument("--threshold", choices=("none", "static", "dynamic"), help="clip x0 predictions (pixel models)")
    p.add_argument("--percentile", type=float, help="dynamic thresholding's percentile p (default: the run's)")
    p.add_argument("--control", action="append", metavar="IMG", help="ControlNet: a control image (edges, mask), "
                   "one per --controlnet, in their order")
    p.add_argument("--control-scale", action="append", type=float, metavar="S",
                   help="ControlNet: the residual scale, one for all or one per --controlnet (default 1)")
    p.add_argument("--guess-mode", action="store_true", help="ControlNet: no prompt; the control alone, "
                   "guided against the base model without control")
    p.add_argument("--control-start", type=float, default=0.0, help="ControlNet: first step fraction controlled")
    p.add_argument("--control-end", type=float, default=1.0, help="ControlNet: last step fraction controlled")
    _controlnet_arg(p)
    _sampling_args(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="FD-EffNet (with floor) and class accuracy of a checkpoint's samples; for an "
                       "autoencoder checkpoint: test-split PSNR, reconstruction FD-EffNet, codebook use; "
                       "`eval adherence CKPT`: prompt adherence of a shapes text-to-image model; "
                       "`eval control CKPT --controlnet CN`: control fidelity (edge F1 / mask IoU) and FD")
    p.add_argument("target", nargs="+", metavar="[adherence|control] CKPT")
    p.add_argument("--n", type=int, default=1000, help="number of samples (and real images) compared")
    p.add_argument("--json", help="write the numbers to this JSON file")
    p.add_argument("--prompts", help="adherence: a file of prompts, one per line (default: the held-out prompts)")
    p.add_argument("--n-per-prompt", type=int, default=16, help="adherence: samples per prompt")
    p.add_argument("--png", help="adherence, control: also save a figure of samples")
    _controlnet_arg(p)
    _sampling_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="train, sample and evaluate the Fashion-MNIST DDPM in minutes")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--minutes", type=float, default=12.0, help="training-time budget")
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--json", help="also write the report here")
    p.set_defaults(func=cmd_demo)

    from latentdiff.bench import add_arguments
    p = sub.add_parser("bench", help="latentdiff vs diffusers on the same U-Nets: training steps/s, forward, "
                       "sampling, peak memory (needs diffusers; README, Performance)")
    add_arguments(p, configs="S,L", rounds=2, precision="fp32")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ValueError, KeyError) as err:
        sys.exit(f"latentdiff {args.command}: {err}")


if __name__ == "__main__":
    main()
