"""DALL·E 3 recaptioning (issue 20): a captioner trained on 5% of shapes' exact captions rewrites the
training set; text-to-image models trained at equal wall time on (a) the alt-text alone, (b) the 95%
synthetic blend, (c) the exact captions (the upper bound), the blend ablation, and prompt upsampling.

Training (``latentdiff train``, two single-thread lanes side by side; a run folder with a checkpoint
is reused): the captioner (15 min) beside the prompt upsampler (5 min); then the training set is
recaptioned (descriptive style, greedy; cached); then six shapes-t2i-pixel models of M minutes
each, three to a lane: alt, recaption (p = 0.95), blend 0.8 | exact, blend 0.65, blend 1.0.

Evaluation (2 threads): the captioner's descriptive captions of 1,000 test images read back against
the images; each text-to-image model's adherence on the 60 held-out prompts (K samples each, the
preset's sampling: 20 DPM-Solver++(2M) steps, guidance 2, dynamic thresholding); prompt upsampling:
model (b) on the 18 short prompts "a {colour} {shape}" (held-out pairs included), K samples each,
with and without upsampling: the share of images holding an object of the named colour and shape.

    python benchmarks/recaption.py --minutes 15 --json benchmarks/results/recaption.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from latentdiff.bench.runs import adherence, cached, train_lanes, train_minutes, train_steps

BLENDS = (0.65, 0.8, 0.95, 1.0)
KEYS = ("single_object_all_correct", "two_object_all_correct", "all_correct", "attributes")


def t2i_images(ckpt: Path, prompts: list[str], seed: int) -> torch.Tensor:
    from latentdiff.pipelines import Conditioning, generate, load_model, text_encoder_for
    from latentdiff.pipelines.diffusion import sampling_options

    denoiser, _, cfg = load_model(ckpt)
    return generate(denoiser, len(prompts), Conditioning(prompts=prompts, text_encoder=text_encoder_for(cfg)),
                    seed=seed, progress=True, **sampling_options(cfg.sample))


def named_match(prompt: str, image: torch.Tensor) -> bool:
    """Whether the image holds an object of the short prompt's colour and shape ("a red circle")."""
    from latentdiff.eval.adherence import read_scene

    _, colour, shape = prompt.split()
    return any(o["colour"] == colour and o["shape"] == shape for o in read_scene(image))


def upsampling_report(run: Path, upsampler: Path, k: int, parts: Path) -> dict:
    from latentdiff.data.shapes import COLOURS, SHAPES
    from latentdiff.pipelines.captioning import load_upsampler, upsample_prompts

    short = [f"a {c} {s}" for c in COLOURS for s in SHAPES]
    repeated = [p for p in short for _ in range(k)]
    model, _ = load_upsampler(upsampler)
    rewritten = upsample_prompts(model, repeated, seed=0)
    report = {}
    for name, prompts in (("without", repeated), ("with", rewritten)):
        images = t2i_images(run / "checkpoint", prompts, seed=7)
        torch.save(images, parts / f"upsampling-{name}.pt")
        report[name] = sum(named_match(p, x) for p, x in zip(repeated, images)) / len(images)
    report |= {"n_prompts": len(short), "k_per_prompt": k, "examples": dict(list(zip(repeated, rewritten))[::k][:6])}
    return report


def blend_plot(blend: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ps = sorted(blend, key=float)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for key, label in (("all_correct", "all correct"), ("single_object_all_correct", "one object"),
                       ("two_object_all_correct", "two objects")):
        ax.plot([float(p) for p in ps], [blend[p][key] for p in ps], "o-", label=label)
    ax.set_xlabel("p: share of synthetic captions in training")
    ax.set_ylabel("held-out prompt adherence")
    ax.set_title("DALL·E 3 caption blend (shapes, equal training time)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def samples_figure(parts: Path, prompts: list[str], k: int, path: Path) -> None:
    from latentdiff.io.images import save_prompt_rows

    pictures = {name: torch.load(parts / f"{name}-images.pt") for name in ("alt", "recaption", "exact")}
    half = len(prompts) // 2
    rows, names = [], []
    for i in (0, 1, half, half + 1):
        for name, images in pictures.items():
            rows.append(images[i * k:i * k + 6])
            names.append(f"{name}: {prompts[i]}")
    save_prompt_rows(torch.cat(rows), names, path,
                     title="held-out prompts: trained on alt-text, the 95% recaption blend, exact captions")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=15.0, help="training wall time of each text-to-image model")
    p.add_argument("--runs-dir", type=Path, default=Path("runs/captioning"))
    p.add_argument("--k", type=int, default=8, help="samples per held-out prompt")
    p.add_argument("--json", default="benchmarks/results/recaption.json")
    p.add_argument("--figures", type=Path, default=Path("docs"))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    runs, m = args.runs_dir, args.minutes
    runs.mkdir(parents=True, exist_ok=True)
    train_lanes([[("shapes-captioner", "shapes-captioner", None, [])],
                 [("shapes-upsampler", "shapes-upsampler", None, [])]], runs)
    torch.set_num_threads(args.threads)
    from latentdiff.data import DataConfig
    from latentdiff.pipelines.captioning import evaluate_captioner, load_captioner, recaption_dataset

    parts = runs / "parts"
    parts.mkdir(exist_ok=True)
    captioner = runs / "shapes-captioner" / "checkpoint"
    report = {"captioner": cached(parts / "captioner.json", lambda: evaluate_captioner(*load_captioner(captioner)))}
    path = recaption_dataset(captioner, DataConfig(name="shapes", image_size=32, channels=3))
    recap = f"data.captions=recaption:{path}"
    blend_runs = {0.95: "recaption", **{b: f"blend-{b:g}" for b in BLENDS if b != 0.95}}
    train_lanes([[("alt", "shapes-t2i-pixel", m, ["data.captions=alt"]),
                  ("recaption", "shapes-t2i-pixel", m, [recap, "data.caption_blend=0.95"]),
                  ("blend-0.8", "shapes-t2i-pixel", m, [recap, "data.caption_blend=0.8"])],
                 [("exact", "shapes-t2i-pixel", m, []),
                  ("blend-0.65", "shapes-t2i-pixel", m, [recap, "data.caption_blend=0.65"]),
                  ("blend-1", "shapes-t2i-pixel", m, [recap, "data.caption_blend=1.0"])]], runs)

    from latentdiff.data.shapes import held_out_prompts

    held_out = held_out_prompts()
    repeated = [q for q in held_out for _ in range(args.k)]

    def model_report(name: str) -> dict:
        images = t2i_images(runs / name / "checkpoint", repeated, seed=7)
        torch.save(images, parts / f"{name}-images.pt")
        return {k: v for k, v in adherence(images, held_out, args.k).items() if k in KEYS} | {
            "train_minutes": train_minutes(runs / name), "train_steps": train_steps(runs / name)}

    for name in ("alt", "recaption", "exact", *[n for b, n in blend_runs.items() if b != 0.95]):
        report[name] = cached(parts / f"{name}.json", lambda name=name: model_report(name))
    report["blend"] = {str(b): report[n] for b, n in sorted(blend_runs.items())}  # "0.65", ..., "1.0"
    report["upsampling"] = cached(parts / "upsampling.json", lambda: upsampling_report(
        runs / "recaption", runs / "shapes-upsampler" / "checkpoint", args.k, parts))
    a, b, c = (report[n]["all_correct"] for n in ("alt", "recaption", "exact"))
    report["ratios"] = {"recaption_over_alt": b / a if a else None, "recaption_over_exact": b / c if c else None}
    report["settings"] = {"minutes_per_model": m, "k_per_prompt": args.k, "held_out_prompts": len(held_out),
                          "recaptions": str(path), "labelled_share": report["captioner"]["labelled_share"],
                          "threads": args.threads, "machine": f"{os.cpu_count()} CPU cores"}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    blend_plot(report["blend"], args.figures / "recaption_blend.png")
    samples_figure(parts, held_out, args.k, args.figures / "recaption_samples.png")
    print(json.dumps({k: v for k, v in report.items() if k not in ("captioner",)}, indent=2, default=str))


if __name__ == "__main__":
    main()
