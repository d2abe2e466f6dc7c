"""Latent vs pixel diffusion on Fashion-MNIST at equal wall time (the claim of Rombach et al. 2021).

Trains the pixel DDPM (preset fmnist-ddpm, the demo) and the latent DDPM (preset fmnist-ldm: the
same U-Net width on the KL-VAE's 8x8x4 latents) for the same number of minutes each, back to back
on this machine, then reports for each:

* train_steps_per_s: the median over the run's metrics windows (each 25 steps, batch 64), and
  the steps done in the budget; also the median ratio of alternated timing rounds after training
  (``--rounds``), which sees both models under the same machine load;
* sample_images_per_s: the same sampler, NFE and guidance for both, decoding included, on
  ``--n-eval`` images; plus the median ratio of alternated rounds of 100 images;
* fd_effnet with its floor at the same N (n >= 2000 for the issue), class accuracy;
* the autoencoder: test-split PSNR, reconstruction FD-EffNet and its floor.

The autoencoder is trained beforehand (``latentdiff train --preset fmnist-vae --out runs/fmnist-vae``);
its training time is a one-off cost shared by every latent model and is reported beside, not inside,
the latent model's budget. Encoding the training set into the latent cache is timed separately.

    python benchmarks/latent_vs_pixel.py --minutes 15 --json benchmarks/results/latent_vs_pixel.json \
        --png docs/latent_vs_pixel.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import matplotlib
import torch

from latentdiff.config import apply_overrides
from latentdiff.data import build_dataset
from latentdiff.io.images import make_grid
from latentdiff.objectives.diffusion import DiffusionLoss
from latentdiff.pipelines import evaluate_autoencoder, evaluate_model, load_model, train_run
from latentdiff.pipelines.autoencoder import autoencoder_for, latent_dataset
from latentdiff.pipelines.conditions import Conditioning
from latentdiff.pipelines.diffusion import build_backbone, class_grid_labels, generate
from latentdiff.presets import get_preset

matplotlib.use("Agg")


def median_window_steps_per_s(run: Path) -> float:
    rates = [json.loads(line)["steps_per_s"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(rates)


def time_train_steps(cfg, dataset, steps: int) -> float:
    """Seconds per optimizer step of a fresh model of ``cfg`` on real batches (forward, backward, AdamW)."""
    torch.manual_seed(0)
    net = build_backbone(cfg).to(memory_format=torch.channels_last)
    loss_fn, opt = DiffusionLoss(cfg.diffusion, cfg.model.num_classes), torch.optim.AdamW(net.parameters(), 1e-4)
    g = torch.Generator().manual_seed(0)
    batch = dataset.get_batch(torch.arange(cfg.train.batch_size))
    bf16 = cfg.train.mixed_precision == "bf16"
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = loss_fn(net, batch, g)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def time_sampling(ckpt: Path, n: int) -> float:
    """Seconds per image for n images with the run's default sampler, decoding included."""
    denoiser, ae, cfg = load_model(ckpt)
    s = cfg.sample
    labels = torch.arange(n) % cfg.model.num_classes
    start = time.perf_counter()
    generate(denoiser, n, Conditioning(class_labels=labels), sampler=s.sampler, steps=s.steps, spacing=s.spacing,
             guidance=s.guidance, bf16=cfg.train.mixed_precision == "bf16", autoencoder=ae)
    return (time.perf_counter() - start) / n


def train_and_evaluate(name: str, cfg, out: Path, n_eval: int) -> dict:
    t0 = time.perf_counter()
    summary = train_run(cfg, out / name)
    print(f"[{name}] trained {summary['steps']} steps in {summary['minutes']:.1f} min "
          f"(wall incl. setup {(time.perf_counter() - t0) / 60:.1f} min)", flush=True)
    denoiser, ae, cfg = load_model(out / name / "checkpoint")
    report, images, _ = evaluate_model(denoiser, cfg, n_eval, autoencoder=ae)
    report.update(train_steps=summary["steps"], train_minutes=summary["minutes"],
                  train_steps_per_s=median_window_steps_per_s(out / name))
    torch.save(images[:1000].clone(), out / name / "eval_images.pt")
    print(f"[{name}] {json.dumps(report)}", flush=True)
    return report


def save_side_by_side(ckpts: dict[str, Path], png: str) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ckpts), figsize=(6 * len(ckpts), 6.4))
    for ax, (name, ckpt) in zip(axes, ckpts.items()):
        denoiser, ae, cfg = load_model(ckpt)
        s = cfg.sample
        images = generate(denoiser, 100, Conditioning(class_labels=class_grid_labels(10, 10)), sampler=s.sampler,
                          steps=s.steps, spacing=s.spacing, guidance=s.guidance, seed=1, autoencoder=ae,
                          bf16=cfg.train.mixed_precision == "bf16")
        ax.imshow(make_grid(images, nrow=10).squeeze(), cmap="gray")
        ax.set_title(f"{name}: {s.sampler} {s.spacing} {s.steps} steps, guidance {s.guidance:g}")
        ax.axis("off")
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=15.0, help="training wall time of each model")
    p.add_argument("--autoencoder", default="runs/fmnist-vae/checkpoint")
    p.add_argument("--out", default="runs/latent_vs_pixel", help="run folders of the two models")
    p.add_argument("--n-eval", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3, help="alternated timing rounds after training")
    p.add_argument("--json")
    p.add_argument("--png", help="the two sample grids side by side")
    args = p.parse_args()
    out = Path(args.out)
    budget = [f"train.max_minutes={args.minutes}"]
    pixel_cfg = apply_overrides(get_preset("fmnist-ddpm"), budget)
    latent_cfg = apply_overrides(get_preset("fmnist-ldm"), budget + [f"autoencoder={args.autoencoder}"])

    ae = autoencoder_for(latent_cfg)
    result = {"minutes_each": args.minutes, "n_eval": args.n_eval,
              "autoencoder": {"checkpoint": args.autoencoder,
                              **evaluate_autoencoder(ae, latent_cfg.data, n_fd=args.n_eval)}}
    print(f"[autoencoder] {json.dumps(result['autoencoder'])}", flush=True)
    t0 = time.perf_counter()
    latents = latent_dataset(latent_cfg, ae)
    result["latent_cache_seconds"] = time.perf_counter() - t0

    result["pixel"] = train_and_evaluate("pixel", pixel_cfg, out, args.n_eval)
    result["latent"] = train_and_evaluate("latent", latent_cfg, out, args.n_eval)

    pixels = build_dataset(pixel_cfg.data, "train")
    step_ratio, sample_ratio = [], []
    for r in range(args.rounds):  # alternate the two systems so that both see the same load
        step_ratio.append(time_train_steps(pixel_cfg, pixels, 20) / time_train_steps(latent_cfg, latents, 20))
        sample_ratio.append(time_sampling(out / "pixel" / "checkpoint", 100)
                            / time_sampling(out / "latent" / "checkpoint", 100))
        print(f"[round {r}] train-step speed-up {step_ratio[-1]:.2f}, sampling speed-up {sample_ratio[-1]:.2f}",
              flush=True)
    result["ratios"] = {
        "train_step_speedup_windows": result["latent"]["train_steps_per_s"] / result["pixel"]["train_steps_per_s"],
        "train_step_speedup_rounds": statistics.median(step_ratio), "train_step_rounds": step_ratio,
        "sampling_speedup_eval": result["latent"]["sample_images_per_s"] / result["pixel"]["sample_images_per_s"],
        "sampling_speedup_rounds": statistics.median(sample_ratio), "sampling_rounds": sample_ratio,
        "fd_latent_over_pixel": result["latent"]["fd_effnet"] / result["pixel"]["fd_effnet"],
    }
    print(json.dumps(result["ratios"], indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.png:
        save_side_by_side({"pixel": out / "pixel" / "checkpoint", "latent": out / "latent" / "checkpoint"}, args.png)


if __name__ == "__main__":
    main()
