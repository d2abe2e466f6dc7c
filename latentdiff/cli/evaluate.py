"""``latentdiff eval``: FD-EffNet and class accuracy of a checkpoint's samples, an autoencoder's
reconstructions or a CLIP model's zero-shot and retrieval scores, and the measures named after
``eval``: ``adherence``, ``control``, ``nll``, ``clip-score``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from latentdiff.cli.checks import write_json


def cmd_eval(args) -> None:
    from latentdiff.cli.checks import check_sampling_args

    check_sampling_args(args)  # before anything is loaded
    from latentdiff.io.checkpoint import read_config
    from latentdiff.pipelines import evaluate_autoencoder, evaluate_model, load_autoencoder, load_model
    from latentdiff.presets import is_autoencoder_config, is_captioner_config, is_clip_config

    if args.target[0] == "adherence":
        return eval_adherence(args)
    if args.target[0] == "control":
        return eval_control(args)
    if args.target[0] == "nll":
        return eval_nll(args)
    if args.target[0] == "clip-score":
        return eval_clip_score(args)
    if len(args.target) != 1:
        sys.exit("usage: latentdiff eval CKPT | latentdiff eval adherence CKPT --prompts FILE")
    ckpt = args.target[0]
    if is_captioner_config(read_config(ckpt)):
        from latentdiff.pipelines.captioning import evaluate_captioner, load_captioner

        model, cap_cfg = load_captioner(ckpt, use_ema=not args.no_ema)
        report = {"checkpoint": str(ckpt), **evaluate_captioner(model, cap_cfg, n=args.n, beam_width=args.beam)}
    elif is_clip_config(read_config(ckpt)):
        from latentdiff.pipelines.clip import evaluate_clip, load_clip

        model, clip_cfg, encoder = load_clip(ckpt, use_ema=not args.no_ema)
        report = {"checkpoint": str(ckpt), "weights": "model" if args.no_ema else "ema",
                  **evaluate_clip(model, clip_cfg, n=args.n, seed=args.seed, encoder=encoder)}
    elif is_autoencoder_config(read_config(ckpt)):
        autoencoder, ae_cfg = load_autoencoder(ckpt, use_ema=not args.no_ema)
        report = evaluate_autoencoder(autoencoder, ae_cfg.data, n_fd=args.n, seed=args.seed)
    else:
        denoiser, autoencoder, cfg = load_model(ckpt, use_ema=not args.no_ema)
        report, _, _ = evaluate_model(denoiser, cfg, args.n, sampler=args.sampler, steps=args.steps,
                                      spacing=args.spacing, guidance=args.guidance, seed=args.seed,
                                      autoencoder=autoencoder)
    print(json.dumps(report, indent=2))
    write_json(args.json, report)


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
    write_json(args.json, report)
    if args.png:
        save_prompt_rows(images, prompts, args.png, title=f"guidance {report['guidance']:g}")


def eval_clip_score(args) -> None:
    """``eval clip-score CKPT --clip CLIP --prompts FILE``: the CLIP score of a text-to-image model."""
    from latentdiff.data.shapes import held_out_prompts
    from latentdiff.pipelines.clip import evaluate_clip_score

    if len(args.target) != 2 or not args.clip:
        sys.exit("usage: latentdiff eval clip-score CKPT --clip CLIP_CKPT [--prompts FILE] [--n-per-prompt K]")
    prompts = ([line.strip() for line in Path(args.prompts).read_text().splitlines() if line.strip()]
               if args.prompts else held_out_prompts())
    report = evaluate_clip_score(args.target[1], args.clip, prompts, args.n_per_prompt, seed=args.seed,
                                 sampler=args.sampler, steps=args.steps, spacing=args.spacing, guidance=args.guidance)
    print(json.dumps(report, indent=2))
    write_json(args.json, report)


def eval_nll(args) -> None:
    """``eval nll CKPT --method vlb|ode|both``: bits/dim on the test split, mean and standard error."""
    from latentdiff.pipelines.likelihood import evaluate_nll

    if len(args.target) != 2:
        sys.exit("usage: latentdiff eval nll CKPT --method vlb|ode|both --n N --seed S --json PATH")
    methods = ("vlb", "ode") if args.method == "both" else (args.method,)
    report = evaluate_nll(args.target[1], methods, n=args.n, seed=args.seed, use_ema=not args.no_ema,
                          class_cond=args.class_cond, n_t=args.n_t, t_sampling=args.t_sampling,
                          n_probes=args.probes, rtol=args.tol, atol=args.tol, ode_n=args.ode_n,
                          ode_batch_size=args.ode_batch_size)
    print(f"{args.target[1]}: {report['covers']}; {report['condition']}")
    for m in methods:
        r = report[m]
        print(f"  {m}: {r['bits_per_dim']:.4f} +- {r['stderr']:.4f} bits/dim (n = {r['n']})")
    write_json(args.json, report)


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
    write_json(args.json, report)
    if args.png:
        k = min(8, args.n)
        save_prompt_rows(torch.cat([v[:k] for v in pictures.values()]), list(pictures), args.png,
                         title=f"held-out {cn_cfg.control.kind} controls, seed {args.seed}")


def add_eval_parser(sub, sampling_args, controlnet_arg) -> None:
    p = sub.add_parser("eval", help="FD-EffNet (with floor) and class accuracy of a checkpoint's samples; for an "
                       "autoencoder checkpoint: test-split PSNR, reconstruction FD-EffNet, codebook use; "
                       "`eval adherence CKPT`: prompt adherence of a shapes text-to-image model; "
                       "`eval control CKPT --controlnet CN`: control fidelity (edge F1 / mask IoU) and FD; "
                       "`eval nll CKPT --method vlb|ode|both`: test-split bits/dim (variational bound, PF-ODE); "
                       "`eval clip-score CKPT --clip CLIP`: CLIP score of a text-to-image model's samples; "
                       "for a CLIP checkpoint: zero-shot accuracy and retrieval recall; for a captioner: its descriptive "
                       "captions of held-out shapes images read back against them")
    p.add_argument("target", nargs="+", metavar="[adherence|control|nll|clip-score] CKPT",
                   help="a checkpoint directory (RUN/checkpoint), after adherence, control, nll or clip-score for "
                   "those measures")
    p.add_argument("--n", type=int, default=1000, help="number of samples (and real images) compared")
    p.add_argument("--json", help="write the numbers to this JSON file")
    p.add_argument("--prompts", help="adherence, clip-score: a file of prompts, one per line (default: the "
                   "held-out shapes prompts)")
    p.add_argument("--clip", metavar="CLIP", help="clip-score: the CLIP-style checkpoint that scores the samples "
                   "(latentdiff train --preset shapes-clip)")
    p.add_argument("--beam", type=int, default=1, help="captioner: beam width (1: greedy decoding)")
    p.add_argument("--n-per-prompt", type=int, default=16, help="adherence, clip-score: samples per prompt")
    p.add_argument("--png", help="adherence, control: also save a figure of samples")
    p.add_argument("--method", choices=("vlb", "ode", "both"), default="vlb",
                   help="nll: the variational bound, the probability-flow ODE likelihood, or both")
    p.add_argument("--n-t", type=int, default=1, help="nll vlb: sampled timesteps per image")
    p.add_argument("--t-sampling", choices=("importance", "uniform", "all"), default="importance",
                   help="nll vlb: how the KL terms' t is drawn (all: every one of the T terms)")
    p.add_argument("--probes", type=int, default=1, help="nll ode: Hutchinson probes per image")
    p.add_argument("--tol", type=float, default=1e-5, help="nll ode: RK45 rtol = atol")
    p.add_argument("--ode-n", type=int, help="nll ode: images for the ODE (default --n)")
    p.add_argument("--ode-batch-size", type=int, default=100, help="nll ode: images per ODE solve")
    p.add_argument("--class-cond", action="store_true", help="nll: p(x | y) with the test labels "
                   "(default: the unconditional p(x), the null class)")
    controlnet_arg(p)
    sampling_args(p)
    p.set_defaults(func=cmd_eval)
