"""Quality at equal wall time: latentdiff's demo model vs diffusers' UNet2DModel + DDPMScheduler.

Both train class-conditionally on Fashion-MNIST 32x32 (the same in-memory data, batch, optimiser,
learning-rate warm-up, EMA, label dropout and bf16 autocast where the preset uses it) for the same
wall time, then draw the same number of samples with 20-step DPM-Solver++(2M) and the same
classifier-free guidance, and are scored by the same FD-EffNet (with its floor) and classifier.
What differs is each library's own part: the network (diffusers' UNet2DModel sized to within 5%
of latentdiff's parameter count), the training target and schedule (DDPMScheduler: linear betas,
eps target, plain MSE) and the sampler implementation (DPMSolverMultistepScheduler).

    python benchmarks/quality_vs_diffusers.py [--minutes 12] [--n-eval 1000] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from tqdm.auto import tqdm

from latentdiff.data import build_dataset
from latentdiff.nn import count_parameters
from latentdiff.pipelines import build_backbone, evaluate_model, load_denoiser, train_run
from latentdiff.pipelines.diffusion import samples_in_bf16
from latentdiff.pipelines.evaluate import balanced_labels, evaluate_images
from latentdiff.presets import get_preset
from latentdiff.training import EMA, build_optimizer, warmup_schedule


def diffusers_unet(target_params: int, num_classes: int) -> UNet2DModel:
    """The UNet2DModel (widths c, 2c, 2c; attention at 16x16 as the DDPM layout) closest in size to the target."""
    best = None
    for layers in (1, 2):
        for c in range(32, 161, 8):
            model = UNet2DModel(sample_size=32, in_channels=1, out_channels=1, layers_per_block=layers,
                                block_out_channels=(c, 2 * c, 2 * c), norm_num_groups=8,
                                down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                                attention_head_dim=c, num_class_embeds=num_classes + 1)
            gap = abs(count_parameters(model) - target_params) / target_params
            if best is None or gap < best[0]:
                best = (gap, model)
    if best[0] > 0.05:
        raise RuntimeError(f"no UNet2DModel within 5% of {target_params} parameters")
    return best[1]


def train_diffusers(model: UNet2DModel, cfg, minutes: float, bf16: bool) -> tuple[EMA, int]:
    """diffusers' recipe (DDPMScheduler, eps MSE) with latentdiff's optimiser settings, for ``minutes``."""
    data = build_dataset(cfg.data, "train")
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    model = model.to(memory_format=torch.channels_last).train()
    t = cfg.train
    optimizer = build_optimizer(model.parameters(), t.lr, t.weight_decay, (0.9, 0.999))
    lr_schedule = warmup_schedule(optimizer, t.warmup_steps)
    ema = EMA(model, t.ema_decay)
    g = torch.Generator().manual_seed(0)
    start, step = time.perf_counter(), 0
    bar = tqdm(desc="train diffusers", unit="step")
    while time.perf_counter() - start < minutes * 60:
        batch = data.get_batch(torch.randint(0, len(data), (t.batch_size,), generator=g))
        x0, labels = batch["x"], batch["label"]
        labels = torch.where(torch.rand(labels.shape, generator=g) < cfg.diffusion.cond_drop_prob,
                             torch.full_like(labels, 10), labels)
        noise = torch.randn(x0.shape, generator=g)
        steps = torch.randint(0, 1000, (x0.shape[0],), generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = model(scheduler.add_noise(x0, noise, steps), steps, class_labels=labels).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        lr_schedule.step()
        ema.update(model, step)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    return ema, step


@torch.no_grad()
def sample_diffusers(model: UNet2DModel, labels: torch.Tensor, steps: int, guidance: float, bf16: bool,
                     batch_size: int = 250) -> torch.Tensor:
    """DPM-Solver++(2M) with classifier-free guidance (cond and uncond batched), as a diffusers user writes it."""
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                            algorithm_type="dpmsolver++", solver_order=2)
    g = torch.Generator().manual_seed(0)
    x_all = torch.randn((len(labels), 1, 32, 32), generator=g)
    out = []
    for start in tqdm(range(0, len(labels), batch_size), desc="sample diffusers"):
        x = x_all[start:start + batch_size] * scheduler.init_noise_sigma
        y = labels[start:start + batch_size]
        y2 = torch.cat([y, torch.full_like(y, 10)])
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                eps = model(torch.cat([x, x]), t, class_labels=y2).sample.float()
            eps_c, eps_u = eps.chunk(2)
            x = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, x).prev_sample
        out.append(x)
    return torch.cat(out).clamp(-1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=12.0, help="training wall time for each library")
    parser.add_argument("--n-eval", type=int, default=1000)
    parser.add_argument("--out", default="benchmarks/results/quality_run")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    cfg = get_preset("fmnist-ddpm")
    cfg = cfg.replace(train=cfg.train.replace(max_minutes=args.minutes))
    bf16 = samples_in_bf16(cfg)
    run = Path(args.out)
    ours_params = count_parameters(build_backbone(cfg))

    summary = train_run(cfg, run / "latentdiff")
    denoiser, cfg = load_denoiser(run / "latentdiff" / "checkpoint")
    ours, _, _ = evaluate_model(denoiser, cfg, args.n_eval)
    ours.update(params=ours_params, train_steps=summary["steps"])

    theirs_model = diffusers_unet(ours_params, 10)
    ema, steps = train_diffusers(theirs_model, cfg, args.minutes, bf16)
    labels = balanced_labels(args.n_eval, 10)
    start = time.perf_counter()
    images = sample_diffusers(ema.model.eval(), labels, cfg.sample.steps, cfg.sample.guidance, bf16)
    seconds = time.perf_counter() - start
    theirs = evaluate_images(images, labels, cfg)
    theirs.update(params=count_parameters(theirs_model), train_steps=steps, sample_seconds=round(seconds, 1),
                  sample_images_per_s=args.n_eval / seconds, config=dict(theirs_model.config))

    keys = ("params", "train_steps", "fd_effnet", "fd_floor", "class_accuracy", "real_class_accuracy",
            "sample_images_per_s")
    print(f"\n{'':22s}{'latentdiff':>14s}{'diffusers':>14s}")
    for k in keys:
        print(f"{k:22s}{ours[k]:>14.4g}{theirs[k]:>14.4g}")
    result = {"minutes": args.minutes, "n_eval": args.n_eval, "latentdiff": ours, "diffusers": theirs}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
