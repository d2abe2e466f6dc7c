"""Cascaded super-resolution (issue 18): a 32 px base + a 32 -> 64 upsampler against one 64 px model
trained for the same total wall time, the augmentation ablation (CDM: noise, blur, none), the
sampling aug-level sweep, and a 16 -> 64 upsampler of held-out photo crops against bicubic.

Training: ``latentdiff train`` in two single-thread lanes side by side, so that every run sees the
same machine: lane A trains shapes64-base (M/2 minutes) then shapes64-sr (M/2), lane B
shapes64-single (M); then the ablation's upsamplers (blur, none) and photo-sr4 side by side. The ablation's upsamplers train for as many steps as shapes64-sr took, so that the three
have equal compute whatever else runs. A run folder whose checkpoint exists is reused (delete it to
retrain).

Evaluation (2 threads, after training): every number at 64 px.
  * FD-EffNet of N samples from the test captions (with its floor FD(train, test) at the same N);
  * prompt adherence on the 60 held-out prompts (30 one-object, 30 two-object, K samples each);
  * images/s: the cascade (base + upsampler) and the single model, alternating, the median of rounds;
  * the sweep: FD of the upsampler's output over aug levels, from base samples of other seeds
    (seed 100) than the headline's, so that the level is chosen on other data than it is judged on;
  * the ablation: the three upsamplers fed the same base samples (seed 0) at their own best level;
  * photos: PSNR / SSIM (scikit-image) of photo-sr4 against bicubic on held-out photo crops, and
    the consistency PSNR of the downsampled output against the input, at the preset's steps and
    over a range of steps.

    python benchmarks/cascade.py --minutes 40 --json benchmarks/results/cascade.json \
        --png docs/cascade_aug_sweep.png
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from latentdiff.bench.runs import adherence, cached, train_lanes, train_minutes, train_steps

SWEEP_LEVELS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
PHOTO_STEPS = (1, 2, 4, 10, 20)


class Systems:
    """The trained models and how each samples (the same settings for every measurement)."""

    def __init__(self, runs: Path, args):
        from latentdiff.pipelines import load_model
        from latentdiff.pipelines.cascade import load_upscaler

        self.base, _, self.base_cfg = load_model(runs / "shapes64-base" / "checkpoint")
        self.single, _, self.single_cfg = load_model(runs / "shapes64-single" / "checkpoint")
        self.stages = {kind: load_upscaler(runs / name / "checkpoint", steps=args.sr_steps, guidance=1.0)
                       for kind, name in (("noise", "shapes64-sr"), ("blur", "shapes64-sr-blur"),
                                          ("none", "shapes64-sr-none")) if (runs / name / "checkpoint").exists()}
        self.args = args

    def base_images(self, prompts: list[str], seed: int) -> torch.Tensor:
        from latentdiff.pipelines import Conditioning, generate, text_encoder_for

        return generate(self.base, len(prompts),
                        Conditioning(prompts=prompts, text_encoder=text_encoder_for(self.base_cfg)),
                        steps=self.args.base_steps, guidance=self.args.guidance, threshold="dynamic", seed=seed,
                        progress=True)

    def upscale(self, kind: str, low: torch.Tensor, prompts: list[str], seed: int, level: float) -> torch.Tensor:
        from latentdiff.pipelines.cascade import upscale

        stage = self.stages[kind]
        stage.aug_level = level
        return upscale(stage, low, prompts, seed=seed + 1000, progress=True)

    def single_images(self, prompts: list[str], seed: int) -> torch.Tensor:
        from latentdiff.pipelines import Conditioning, generate, text_encoder_for

        return generate(self.single, len(prompts),
                        Conditioning(prompts=prompts, text_encoder=text_encoder_for(self.single_cfg)),
                        steps=self.args.single_steps, guidance=self.args.guidance, threshold="dynamic", seed=seed,
                        progress=True)


def fd_report(images: torch.Tensor, seed: int = 0) -> dict:
    from latentdiff.data import DataConfig, build_dataset
    from latentdiff.eval import fd_with_floor

    data = DataConfig(name="shapes", image_size=64, channels=3)
    return fd_with_floor(images, build_dataset(data, "test"), build_dataset(data, "train"), seed=seed)


def images_per_s(systems: Systems, level: float, rounds: int, n: int) -> dict:
    """Both systems on the same n test prompts, alternating, ``rounds`` times: median images/s."""
    from latentdiff.data import DataConfig, build_dataset

    prompts = build_dataset(DataConfig(name="shapes", image_size=64, channels=3), "test").captions[:n]
    times = {"cascade": [], "single": []}
    for r in range(rounds):
        t = time.perf_counter()
        systems.upscale("noise", systems.base_images(prompts, 50 + r), prompts, 50 + r, level)
        times["cascade"].append(time.perf_counter() - t)
        t = time.perf_counter()
        systems.single_images(prompts, 50 + r)
        times["single"].append(time.perf_counter() - t)
    return {k: n / statistics.median(v) for k, v in times.items()} | {"rounds_s": times}


def photo_report(run: Path, n: int, seed: int = 0) -> tuple[dict, dict]:
    """photo-sr4 on n held-out crops: the SR metrics, and the figure's rows (8 crops)."""
    from latentdiff.data import DataConfig, build_dataset
    from latentdiff.eval.superres import superres_report
    from latentdiff.nn.superres import resample
    from latentdiff.pipelines.cascade import load_upscaler, upscale

    stage = load_upscaler(run / "checkpoint")
    test = build_dataset(DataConfig(name="photos", image_size=64, channels=3), "test")
    index = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n]
    truth = test.get_batch(index)["x"]
    low = resample(truth, 64 // stage.cfg.superres.factor)
    sr = upscale(stage, low, seed=seed, progress=True)
    report = superres_report(sr, low, truth) | {"aug_level": stage.cfg.superres.aug_level,
                                                "steps": stage.cfg.sample.steps, "train_minutes": train_minutes(run)}
    # the perception-distortion trade-off (Blau & Michaeli 2018): fewer steps sit nearer the posterior
    # mean, which PSNR favours; more steps draw sharper samples of the posterior
    report["by_steps"] = {}
    for steps in PHOTO_STEPS:
        stage.steps = steps
        report["by_steps"][str(steps)] = superres_report(upscale(stage, low, seed=seed, progress=True), low, truth)
    rows = {"low-res input (16 px)": torch.nn.functional.interpolate(low[:8], size=64, mode="nearest"),
            "bicubic": resample(low[:8], 64).clamp(-1, 1), "photo-sr4": sr[:8], "ground truth": truth[:8]}
    return report, rows


def sweep_plot(sweep: dict, floor: float, floor_n: int, sweep_n: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for kind, points in sweep.items():
        levels = [float(k) for k in points]
        ax.plot(levels, list(points.values()), "o-", label=f"trained with {kind} augmentation")
    ax.axhline(floor, color="grey", ls=":", label=f"floor FD(train, test) at N = {floor_n} (higher at N = {sweep_n})")
    ax.set_xlabel("sampling aug level s (noise added to the base's samples)")
    ax.set_ylabel("FD-EffNet of the cascade's 64 px output")
    ax.set_title(f"Aug-level sweep (N = {sweep_n} base samples of seed 100)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=40.0, help="total training wall time of each system")
    p.add_argument("--photo-minutes", type=float, default=25.0)
    p.add_argument("--runs-dir", type=Path, default=Path("runs/cascade"))
    p.add_argument("--n", type=int, default=1000, help="samples for FD-EffNet")
    p.add_argument("--sweep-n", type=int, default=500, help="samples per level of the aug-level sweep")
    p.add_argument("--k", type=int, default=8, help="samples per held-out prompt for adherence")
    p.add_argument("--photo-n", type=int, default=500)
    p.add_argument("--base-steps", type=int, default=16)
    p.add_argument("--sr-steps", type=int, default=6)
    p.add_argument("--single-steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default="benchmarks/results/cascade.json")
    p.add_argument("--png", default="docs/cascade_aug_sweep.png")
    p.add_argument("--figures", default="docs", help="folder of the README figures")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    runs, m = args.runs_dir, args.minutes
    runs.mkdir(parents=True, exist_ok=True)
    train_lanes([[("shapes64-base", "shapes64-base", m / 2, []), ("shapes64-sr", "shapes64-sr", m / 2, [])],
                 [("shapes64-single", "shapes64-single", m, [])]], runs)
    # the ablation's upsamplers take as many steps as the noise-augmented one (equal compute, whatever
    # else the machine runs), side by side with the photo upsampler
    steps = [f"train.max_steps={train_steps(runs / 'shapes64-sr')}", "train.max_minutes=null", "superres.aug_level=0"]
    train_lanes([[("shapes64-sr-blur", "shapes64-sr", None, ["superres.augment=blur", *steps])],
                 [("shapes64-sr-none", "shapes64-sr", None, ["superres.augment=none", *steps])],
                 [("photo-sr4", "photo-sr4", args.photo_minutes, [])]], runs)

    from latentdiff.data import DataConfig, build_dataset
    from latentdiff.data.shapes import held_out_prompts
    from latentdiff.io.images import save_prompt_rows

    parts = runs / "parts"
    systems = Systems(runs, args)
    test_captions = build_dataset(DataConfig(name="shapes", image_size=64, channels=3), "test").captions
    fd_prompts = [test_captions[i % len(test_captions)] for i in range(args.n)]
    sweep_prompts = [test_captions[(i + args.n) % len(test_captions)] for i in range(args.sweep_n)]
    held_out = held_out_prompts()
    repeated = [q for q in held_out for _ in range(args.k)]

    # the sweep chooses each upsampler's level, on other seeds and prompts than the headline numbers
    sweep_base = systems.base_images(sweep_prompts, seed=100)
    sweep = {kind: cached(parts / f"sweep-{kind}.json", lambda kind=kind: {
        str(s): fd_report(systems.upscale(kind, sweep_base, sweep_prompts, 100, s))["fd_effnet"]
        for s in (SWEEP_LEVELS if kind == "noise" else (0.0,))}) for kind in systems.stages}
    best = {kind: float(min(points, key=points.get)) for kind, points in sweep.items()}

    base_fd = systems.base_images(fd_prompts, seed=0)
    ablation = {kind: cached(parts / f"ablation-{kind}.json", lambda kind=kind: fd_report(
        systems.upscale(kind, base_fd, fd_prompts, 0, best[kind])) | {"aug_level": best[kind]})
        for kind in systems.stages}
    level = best["noise"]

    def system_report(name: str) -> dict:
        stages = ("shapes64-base", "shapes64-sr") if name == "cascade" else ("shapes64-single",)
        if name == "cascade":
            fd_images = systems.upscale("noise", base_fd, fd_prompts, 0, level)
            adh_images = systems.upscale("noise", systems.base_images(repeated, 7), repeated, 7, level)
        else:
            fd_images, adh_images = systems.single_images(fd_prompts, 0), systems.single_images(repeated, 7)
        minutes = {run: train_minutes(runs / run) for run in stages}
        steps = {run: train_steps(runs / run) for run in stages}
        torch.save(adh_images, parts / f"{name}-adherence-images.pt")  # for the README figure
        return fd_report(fd_images) | {k: v for k, v in adherence(adh_images, held_out, args.k).items()
                                       if k in ("single_object_all_correct", "two_object_all_correct",
                                                "all_correct", "attributes")} | {
            "train_minutes": sum(minutes.values()), "train_minutes_per_run": minutes, "train_steps_per_run": steps}

    report = {name: cached(parts / f"{name}.json", lambda name=name: system_report(name))
              for name in ("cascade", "single")}
    speed = cached(parts / "speed.json", lambda: images_per_s(systems, level, args.rounds, 64))
    for name in ("cascade", "single"):
        report[name]["images_per_s"] = speed[name]
    report["cascade"].update(aug_level=level, base_steps=args.base_steps, sr_steps=args.sr_steps)
    report["single"].update(steps=args.single_steps)
    report["ablation"] = ablation
    report["sweep"] = {"levels": list(SWEEP_LEVELS), "fd_effnet": sweep, "n_eval": args.sweep_n, "seed": 100}
    photo, rows = photo_report(runs / "photo-sr4", args.photo_n)
    report["photo"] = photo
    report["settings"] = {"guidance": args.guidance, "n_fd": args.n, "k_per_prompt": args.k,
                          "held_out_prompts": len(held_out), "threads": args.threads,
                          "machine": f"{os.cpu_count()} CPU cores"}
    report["ratios"] = {"fd_cascade_over_single": report["cascade"]["fd_effnet"] / report["single"]["fd_effnet"],
                        "speed_cascade_over_single": speed["cascade"] / speed["single"]}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    sweep_plot(sweep, ablation["noise"]["fd_floor"], ablation["noise"]["n_eval"], args.sweep_n, args.png)
    save_prompt_rows(torch.cat(list(rows.values())), list(rows), Path(args.figures) / "photo_sr4.png",
                     title="held-out photo crops, 16 -> 64")
    samples_figure(parts, held_out, args.k, Path(args.figures) / "cascade_samples.png")
    print(json.dumps({k: report[k] for k in ("cascade", "single", "ratios", "photo")}, indent=2))


def samples_figure(parts: Path, prompts: list[str], k: int, path: Path, shown: int = 4) -> None:
    """Held-out prompts (three one-object, three two-object): the cascade's and the single model's
    first ``shown`` samples of each, a row each."""
    from latentdiff.io.images import save_prompt_rows

    pictures = {name: torch.load(parts / f"{name}-adherence-images.pt") for name in ("cascade", "single")}
    half = len(prompts) // 2
    chosen = [0, 1, 2, half, half + 1, half + 2]
    rows, names = [], []
    for i in chosen:
        for name, images in pictures.items():
            rows.append(images[i * k:i * k + shown])
            names.append(f"{name}: {prompts[i]}")
    save_prompt_rows(torch.cat(rows), names, path, title="held-out prompts: cascade (base 32 px + SR) vs single 64 px")


if __name__ == "__main__":
    main()
