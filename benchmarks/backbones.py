"""U-Net, DiT and MMDiT at equal wall time (issue 21): prompt adherence on shapes' held-out prompts,
FD-EffNet with its floor, training steps/s and sampling images/s; and class-conditional
Fashion-MNIST, the DiT against the demo U-Net at the demo's budget.

Training (two lanes side by side, one core each; a run folder that has its checkpoint is reused):
every shapes design is trained to ``--minutes`` in segments (``--curve`` minutes; a copy of the
checkpoint is kept at each, ``RUN/at-<m>min``), so the adherence-vs-minutes curve comes from the
same run. The designs (parameter counts printed; within 10% of the U-Net's 6.0M):

    unet        shapes-t2i-pixel (v target, min-SNR-5, cosine)   the Imagen-style baseline
    unet-flow   the same U-Net trained by rectified flow (logit-normal t)
    dit         shapes-t2i-dit    (cross-attention to text, rectified flow)
    mmdit       shapes-t2i-mmdit  (joint attention, rectified flow)
    unet-flow-pos  shapes-t2i-flow (unet-flow with fixed 2D positions after conv_in): ``--best``'s
                design, trained on its own for the curve (not in the equal-time lanes)

Evaluation (two threads): ``--k`` samples of each of the 60 held-out prompts (the held-out
colour-shape pairs) with each run's own sampling defaults (guidance 2), read back by the exact
scene reader; FD-EffNet of ``--n-fd`` samples of test captions against the test split (with its
floor at that N); training steps/s and sampling images/s of all designs measured in one process in
alternating rounds (``fair_speeds``; the runs' own steps/s are kept as ``train_steps_per_s_in_run``). Fashion-MNIST: ``fmnist-ddpm``
and ``fmnist-dit`` for ``--fmnist-minutes`` each, FD-EffNet of 1000 samples (guidance 2).

    python benchmarks/backbones.py --minutes 20 --curve 10,20 --json benchmarks/results/backbones.json \
        --png docs/backbones_curve.png
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import torch

from latentdiff.bench.runs import adherence, cached, in_lanes, last_metrics, train_minutes, train_steps
from latentdiff.bench.runs import train as train_run

FLOW = ["diffusion.parameterisation=flow", "diffusion.min_snr_gamma=null"]
DESIGNS = {"unet": ("shapes-t2i-pixel", []), "unet-flow": ("shapes-t2i-pixel", FLOW),
           "dit": ("shapes-t2i-dit", []), "mmdit": ("shapes-t2i-mmdit", []),
           "unet-flow-pos": ("shapes-t2i-flow", [])}
LANES = (("unet", "dit"), ("mmdit", "unet-flow"))
FMNIST = {"fmnist-unet": "fmnist-ddpm", "fmnist-dit": "fmnist-dit"}
KEYS = ("single_object_all_correct", "two_object_all_correct", "all_correct", "attributes")
BAR = (0.90, 0.60)  # issue 21: single-object and two-object all-correct on held-out prompts


def train(run: Path, preset: str, overrides: list[str], marks: list[float], threads: int = 1) -> None:
    """Train ``run`` to each minute mark in turn (resuming), keeping a copy of the checkpoint at each
    and the step it was taken at (``at-<m>min/step.json``)."""
    for m in marks:
        copy = run / f"at-{m:g}min"
        if (copy / "config.json").exists():
            continue
        train_run(run, preset, m, overrides, log_mode="a", threads=threads)
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(run / "checkpoint", copy)
        (copy / "step.json").write_text(json.dumps({"step": train_steps(run), "minutes": train_minutes(run)}))


def sample(ckpt: Path, prompts: list[str], seed: int) -> tuple[torch.Tensor, float]:
    """(images of the prompts with the run's sampling defaults, images/s)."""
    from latentdiff.pipelines import Conditioning, generate, load_model, text_encoder_for
    from latentdiff.pipelines.diffusion import sampling_options

    denoiser, _, cfg = load_model(ckpt)
    start = time.perf_counter()
    images = generate(denoiser, len(prompts), Conditioning(prompts=prompts, text_encoder=text_encoder_for(cfg)),
                      seed=seed, progress=True, **sampling_options(cfg.sample))
    return images, len(prompts) / (time.perf_counter() - start)


def fair_speeds(runs: Path, names: list[str], rounds: int = 3, batch: int = 64, n_images: int = 50) -> dict:
    """Training steps/s (the run's own loss, AdamW, a batch of ``batch`` shapes) and sampling images/s
    (``n_images`` test captions, the run's sampling defaults) of every design, measured in this one
    process in alternating rounds, so that other load on the machine falls on all of them alike
    (the runs' own logs saw different load). -> {name: {"train_steps_per_s", "images_per_s"}} medians."""
    from latentdiff.config import apply_overrides
    from latentdiff.data import build_dataset
    from latentdiff.objectives.flow import diffusion_loss
    from latentdiff.pipelines import build_backbone
    from latentdiff.pipelines.diffusion import text_conditioned
    from latentdiff.presets import get_preset

    steps = {n: [] for n in names}
    images = {n: [] for n in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            cfg = apply_overrides(get_preset(DESIGNS[name][0]), DESIGNS[name][1])
            test = build_dataset(cfg.data, "test")
            b = text_conditioned(cfg, test, list(test.captions[:batch])).get_batch(torch.arange(batch))
            net, loss_fn, g = build_backbone(cfg), diffusion_loss(cfg.diffusion), torch.Generator().manual_seed(r)
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
            start = time.perf_counter()
            for _ in range(3):
                loss_fn(net, b, g)[0].backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            steps[name].append(3 / (time.perf_counter() - start))
            images[name].append(sample(runs / name / "checkpoint", list(test.captions[:n_images]), seed=1)[1])
    return {n: {"train_steps_per_s": statistics.median(steps[n]), "images_per_s": statistics.median(images[n])}
            for n in names}


def parameters(preset: str, overrides: list[str]) -> int:
    from latentdiff.config import apply_overrides
    from latentdiff.nn import count_parameters
    from latentdiff.pipelines import build_backbone
    from latentdiff.presets import get_preset

    return count_parameters(build_backbone(apply_overrides(get_preset(preset), overrides)))


def design_report(runs: Path, name: str, marks: list[float], k: int, n_fd: int, parts: Path) -> dict:
    """One design: adherence at every mark, and at the last its FD, steps/s and images/s."""
    from latentdiff.data import DataConfig, build_dataset
    from latentdiff.eval import fd_with_floor

    preset, overrides = DESIGNS[name]
    curve = [{"minutes": m, **held_out_adherence(runs / name / f"at-{m:g}min", k, parts, f"{name}-{m:g}min")}
             for m in marks]
    data = DataConfig(name="shapes", image_size=32, channels=3)
    test, train_split = build_dataset(data, "test"), build_dataset(data, "train")
    fd_images, _ = sample(runs / name / "checkpoint", list(test.captions[:n_fd]), seed=0)
    speeds = [sample(runs / name / "checkpoint", list(test.captions[:50]), seed=1)[1] for _ in range(3)]
    objective = "flow" if name != "unet" else "v"
    return {"name": name, "preset": preset, "overrides": overrides, "backbone": name.split("-")[0],
            "objective": objective, "params": parameters(preset, overrides),
            "train_minutes": train_minutes(runs / name),
            "train_steps": train_steps(runs / name),
            "train_steps_per_s": train_steps(runs / name) / (60 * train_minutes(runs / name)),
            **{key: curve[-1][key] for key in KEYS}, **fd_with_floor(fd_images, test, train_split),
            "images_per_s": statistics.median(speeds), "curve": curve}


def fmnist_report(runs: Path, name: str) -> dict:
    from latentdiff.pipelines import load_model
    from latentdiff.pipelines.evaluate import evaluate_model

    denoiser, autoencoder, cfg = load_model(runs / name / "checkpoint")
    report, _, _ = evaluate_model(denoiser, cfg, 1000, autoencoder=autoencoder)
    return {"name": name, "preset": FMNIST[name], "params": parameters(FMNIST[name], []),
            "train_minutes": train_minutes(runs / name), "train_steps": train_steps(runs / name),
            "last_loss": last_metrics(runs / name).get("loss"),
            **{k: report.get(k) for k in ("fd_effnet", "fd_floor", "class_accuracy", "sample_images_per_s")}}


def curve_plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, key, title in ((axes[0], "single_object_all_correct", "single object"),
                           (axes[1], "two_object_all_correct", "two objects with a relation")):
        for r in runs:
            ax.plot([c["minutes"] for c in r["curve"]], [c[key] for c in r["curve"]], "o-", label=r["name"])
        ax.set_title(f"held-out prompts: {title}")
        ax.set_xlabel("training minutes (one CPU core)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("all-correct rate")
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def samples_figure(pictures: dict[str, torch.Tensor], k: int, path: Path, title: str) -> None:
    """Four held-out prompts (two single-object, two with a relation), a row of k samples for each
    entry of ``pictures`` (label: the k samples of every held-out prompt, prompt-major)."""
    from latentdiff.data.shapes import held_out_prompts
    from latentdiff.io.images import save_prompt_rows

    prompts = held_out_prompts()
    half = len(prompts) // 2
    rows, titles = [], []
    for i in (0, 1, half, half + 1):
        for name, images in pictures.items():
            rows.append(images[i * k:(i + 1) * k][:4])
            titles.append(f"{name}: {prompts[i]}")
    save_prompt_rows(torch.cat(rows), titles, path, title=title)


def held_out_adherence(ckpt: Path, k: int, parts: Path, tag: str) -> dict:
    """Adherence of ``k`` samples of each held-out prompt (seed 7); the images kept as ``parts/TAG-images.pt``."""
    from latentdiff.data.shapes import held_out_prompts

    held_out = held_out_prompts()
    images, _ = sample(ckpt, [q for q in held_out for _ in range(k)], seed=7)
    torch.save(images, parts / f"{tag}-images.pt")
    return {key: v for key, v in adherence(images, held_out, k).items() if key in KEYS}


def best_curve(runs: Path, name: str, marks: list[float], threads: int, k: int, parts: Path) -> dict:
    """The chosen design trained alone on ``threads`` threads (the bar's "2 CPU cores") to the last mark,
    one run with a checkpoint kept at every mark, and its held-out adherence at each."""
    preset, overrides = DESIGNS[name]
    run = runs / f"{name}-{threads}threads"
    train(run, preset, overrides, marks, threads=threads)
    curve = []
    for m in marks:
        at = run / f"at-{m:g}min"
        point = cached(parts / f"{run.name}-{m:g}min.json",
                       lambda at=at, m=m: held_out_adherence(at, k, parts, f"{run.name}-{m:g}min"))
        curve.append({"minutes": m, "train_steps": json.loads((at / "step.json").read_text())["step"], **point})
    return {"preset": preset, "name": name, "overrides": overrides, "threads": threads, "k_per_prompt": k,
            "curve": curve, "crossing_minutes": crossing(curve)}


def crossing(curve: list[dict]) -> float | None:
    """The first mark at which both bars (single >= 0.90, two-object >= 0.60) hold; None if none does."""
    return next((c["minutes"] for c in curve if c["single_object_all_correct"] >= BAR[0]
                 and c["two_object_all_correct"] >= BAR[1]), None)


def best_plot(best: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    minutes = [c["minutes"] for c in best["curve"]]
    for key, bar, label in (("single_object_all_correct", BAR[0], "single object"),
                            ("two_object_all_correct", BAR[1], "two objects with a relation")):
        line, = ax.plot(minutes, [c[key] for c in best["curve"]], "o-", label=label)
        ax.axhline(bar, color=line.get_color(), ls=":", lw=1)
    ax.axvline(30, color="grey", ls="--", lw=1)
    ax.set_xlabel(f"training minutes ({best['threads']} CPU threads)")
    ax.set_ylabel("all-correct rate, held-out prompts")
    ax.set_title(f"{best['name']}: adherence against training time (dotted: the bars)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def compare_designs(args, runs: Path, parts: Path) -> dict:
    """Every design at equal wall time (two lanes of one core), and Fashion-MNIST; figures written."""
    marks = sorted({float(m) for m in args.curve.split(",")} | {args.minutes})
    names = [n for lane in LANES for n in lane]
    for name in names:
        print(f"{name}: {parameters(*DESIGNS[name]):,} parameters", flush=True)
    in_lanes([list(lane) for lane in LANES], lambda n: train(runs / n, *DESIGNS[n], marks))
    torch.set_num_threads(args.threads)
    designs = [cached(parts / f"{n}.json", lambda n=n: design_report(runs, n, marks, args.k, args.n_fd, parts))
               for n in names]
    speeds = cached(parts / "speeds.json", lambda: fair_speeds(runs, names))
    for r in designs:
        r["train_steps_per_s_in_run"] = r["train_steps"] / (60 * r["train_minutes"])
        r.update(speeds[r["name"]])
    in_lanes([["fmnist-unet"], ["fmnist-dit"]], lambda n: train(runs / n, FMNIST[n], [], [args.fmnist_minutes]))
    torch.set_num_threads(args.threads)
    fmnist = [cached(parts / f"{n}.json", lambda n=n: fmnist_report(runs, n)) for n in FMNIST]
    score = lambda r: r["two_object_all_correct"] + r["single_object_all_correct"]  # noqa: E731
    best = max(designs, key=score)
    curve_plot(designs, args.png)
    pictures = {n: torch.load(parts / f"{n}-{args.minutes:g}min-images.pt") for n in names}
    samples_figure(pictures, args.k, args.png.with_name("backbones_samples.png"),
                   f"held-out prompts after {args.minutes:g} min: " + ", ".join(names))
    for r in designs:
        print(f"{r['name']:10s} {r['params']:>10,d} params  single {r['single_object_all_correct']:.3f}  two "
              f"{r['two_object_all_correct']:.3f}  FD {r['fd_effnet']:.1f} (floor {r['fd_floor']:.1f})  "
              f"{r['train_steps_per_s']:.2f} steps/s  {r['images_per_s']:.1f} img/s")
    for r in fmnist:
        print(f"{r['name']:12s} FD {r.get('fd_effnet')} (floor {r.get('fd_floor')})")
    return {"runs": designs, "best": {"preset": best["preset"], "name": best["name"], "curve": best["curve"]},
            "fmnist": fmnist,
            "settings": {"minutes": args.minutes, "curve": marks, "k_per_prompt": args.k, "held_out_prompts": 60,
                         "n_fd": args.n_fd, "threads_per_lane": 1, "eval_threads": args.threads,
                         "machine": f"{os.cpu_count()} CPU cores"}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=20.0, help="training wall time of each shapes design")
    p.add_argument("--curve", default="10,20", help="minute marks of the adherence curve (the last = --minutes)")
    p.add_argument("--fmnist-minutes", type=float, default=12.0)
    p.add_argument("--runs-dir", type=Path, default=Path("runs/backbones"))
    p.add_argument("--k", type=int, default=4, help="samples per held-out prompt")
    p.add_argument("--n-fd", type=int, default=300)
    p.add_argument("--json", default="benchmarks/results/backbones.json")
    p.add_argument("--png", type=Path, default=Path("docs/backbones_curve.png"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--best", choices=list(DESIGNS), help="the design of the long run (default: the best at "
                   "equal time)")
    p.add_argument("--best-curve", default="10,20,30,60,90", help="minute marks of the long run")
    p.add_argument("--best-k", type=int, default=8, help="samples per held-out prompt on the long run's curve")
    p.add_argument("--only-best", action="store_true", help="keep the equal-time comparison already in --json "
                   "and run the long run alone")
    args = p.parse_args()
    runs, parts = args.runs_dir, args.runs_dir / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    report = json.loads(Path(args.json).read_text()) if args.only_best else compare_designs(args, runs, parts)
    marks = sorted(float(m) for m in args.best_curve.split(","))
    best = best_curve(runs, args.best or report["best"]["name"], marks, args.threads, args.best_k, parts)
    report["best"] = best
    report["settings"] |= {"best_curve": marks, "best_threads": args.threads, "best_k_per_prompt": args.best_k}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    best_plot(best, args.png.with_name("backbones_best_curve.png"))
    shown = sorted({30.0, marks[-1]} & set(marks))
    tag = f"{best['name']}-{args.threads}threads"
    pictures = {f"{m:g} min": torch.load(parts / f"{tag}-{m:g}min-images.pt") for m in shown}
    samples_figure(pictures, args.best_k, args.png.with_name("backbones_best_samples.png"),
                   "held-out prompts after " + " and ".join(f"{m:g}" for m in shown) +
                   f" min ({best['name']}, {args.threads} threads)")
    for c in best["curve"]:
        print(f"{best['name']} at {c['minutes']:g} min ({c['train_steps']} steps): single "
              f"{c['single_object_all_correct']:.3f}  two {c['two_object_all_correct']:.3f}")


if __name__ == "__main__":
    main()
