"""One-step generation against the teacher: FD-EffNet, class accuracy and images/s of a diffusion
teacher at 50, 20, 10, 4 and 1 NFE (its best sampler at each, from benchmarks/fmnist_fd_vs_nfe.py)
and of its DMD student at 1 step and DMD2 student at 1 and 4 steps (Yin et al. 2023, 2024).

Every system draws the same n images: the same seed, so the same class labels (or prompts) and the
same initial noise. FD-EffNet is against the test split, beside its floor FD(train, test) at the
same n; class accuracy by the Fashion-MNIST classifier (DESIGN.md section 5). images/s is timed
separately, after all quality rows, on ``--time-n`` images per system and round, the systems
alternating over ``--rounds`` rounds (median and min-max), so that all share the machine's state.

Quality rows already in ``--json`` with the same key (system, checkpoint, sampler, spacing, NFE, n,
seed) are kept and marked ``"reused": true`` (computed by an earlier run of this script), so that a
teacher's slow rows need not be redone when a student is added.

    python benchmarks/one_step.py --teacher demo_out/checkpoint --student runs/fmnist-dmd/checkpoint \
        --student2 runs/fmnist-dmd2/checkpoint --n 2000 --json benchmarks/results/one_step.json \
        --png docs/one_step.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import matplotlib
import torch

from latentdiff.io.checkpoint import read_config
from latentdiff.io.images import make_grid
from latentdiff.pipelines.conditions import Conditioning
from latentdiff.pipelines.diffusion import fit_model_grid, generate, load_model, samples_in_bf16
from latentdiff.pipelines.evaluate import balanced_labels, evaluate_images, evaluation_prompts

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The teacher's best sampler per NFE on this model (benchmarks/results/fmnist_fd_vs_nfe.json), and
# plain DDIM at 4 and 2 NFE beside the fitted grids.
TEACHER_SPECS = ["50:ddim:trailing", "20:ddim:trailing", "10:unipc_bh3:fitted", "4:unipc_bh3:fitted",
                 "4:ddim:trailing", "2:ddim:fitted", "2:ddim:trailing", "1:ddim:trailing"]


def systems(args) -> list[dict]:
    """What to draw: the teacher at each spec, then the students (sampler ``consistency``, trailing)."""
    out = []
    for spec in args.teacher_specs:
        nfe, sampler, spacing = spec.split(":")
        out.append(dict(system="teacher", ckpt=args.teacher, sampler=sampler, spacing=spacing, nfe=int(nfe)))
    for name, ckpt, steps in (("DMD", args.student, [1]), ("DMD2", args.student2, args.student2_steps)):
        for k in steps if ckpt else []:
            out.append(dict(system=name, ckpt=ckpt, sampler="consistency", spacing="trailing", nfe=k))
    return out


def load_system(ckpt: str):
    """(denoiser, autoencoder, teacher RunConfig, guidance): a teacher checkpoint or a DMD student."""
    if read_config(ckpt).get("task") == "dmd":
        from latentdiff.pipelines.dmd import load_student

        student, autoencoder, cfg, _ = load_student(ckpt)
        return student, autoencoder, cfg, 1.0  # the guidance is distilled into the student
    denoiser, autoencoder, cfg = load_model(ckpt)
    return denoiser, autoencoder, cfg, cfg.sample.guidance


def conditioning(cfg, n: int) -> tuple[Conditioning, torch.Tensor | None]:
    """generate()'s conditioning for n balanced class labels or the evaluation prompts; and their labels."""
    if cfg.text is not None:
        from latentdiff.pipelines.diffusion import text_encoder_for

        prompts, labels = evaluation_prompts(cfg, n)
        return Conditioning(prompts=prompts, text_encoder=text_encoder_for(cfg)), labels
    labels = balanced_labels(n, cfg.model.num_classes) if cfg.model.num_classes else None
    return Conditioning(class_labels=labels), labels


def draw(row: dict, n: int, seed: int, sigmas=None, progress: bool = False, system=None):
    """(images (n, C, H, W), labels or None) of this row's system (``system``: load_system's tuple)."""
    model, autoencoder, cfg, guidance = system or load_system(row["ckpt"])
    condition, labels = conditioning(cfg, n)
    images = generate(model, n, condition, sampler=row["sampler"], steps=row["nfe"], spacing=row["spacing"],
                      sigmas=sigmas, guidance=guidance, seed=seed, bf16=samples_in_bf16(cfg), autoencoder=autoencoder,
                      progress=progress)
    return images, labels


def quality_row(row: dict, n: int, seed: int) -> tuple[dict, torch.Tensor]:
    """FD-EffNet, floor and class accuracy of n images of this system; fitted grids are fitted here."""
    sigmas, system = None, load_system(row["ckpt"])
    model, _, cfg, guidance = system
    if row["spacing"] == "fitted":
        start = time.perf_counter()
        fit = fit_model_grid(model, row["sampler"], row["nfe"], guidance=guidance,
                             max_evals=max(20, 1000 // (2 * row["nfe"])), n_starts=2)
        sigmas = fit.sigmas
        row.update(fit_seconds=round(time.perf_counter() - start, 1), pilot_calls=fit.pilot_calls,
                   sigmas=[round(float(s), 5) for s in sigmas])
    start = time.perf_counter()
    images, labels = draw(row, n, seed, sigmas, progress=True, system=system)
    row["sample_seconds"] = round(time.perf_counter() - start, 1)
    row.update(evaluate_images(images, labels, cfg, seed=seed))
    return row, images


def key(row: dict, n: int, seed: int) -> tuple:
    return (row["system"], row["ckpt"], row["sampler"], row["spacing"], row["nfe"], n, seed)


def row_sigmas(row: dict) -> torch.Tensor | None:
    """A fitted row's grid, as the quality run fitted it."""
    return torch.tensor(row["sigmas"], dtype=torch.float64) if "sigmas" in row else None


def throughput(rows: list[dict], n: int, rounds: int, seed: int) -> None:
    """images/s of each row on n images per round (models loaded beforehand), rows alternating within
    each round; adds ``images_per_s`` (median), ``images_per_s_min``/``max`` to each row."""
    loaded = {row["ckpt"]: load_system(row["ckpt"]) for row in rows}
    times: dict[int, list[float]] = {i: [] for i in range(len(rows))}
    for _ in range(rounds):
        for i, row in enumerate(rows):
            start = time.perf_counter()
            draw(row, n, seed, row_sigmas(row), system=loaded[row["ckpt"]])
            times[i].append(n / (time.perf_counter() - start))
    for i, row in enumerate(rows):
        row.update(images_per_s=statistics.median(times[i]), images_per_s_min=min(times[i]),
                   images_per_s_max=max(times[i]), timing_n=n, timing_rounds=rounds)


def figure(rows: list[dict], images: list[torch.Tensor], path: str, per_class: int = 4) -> None:
    """Sample grids side by side: one panel per system, a column per class, ``per_class`` rows."""
    cols = min(4, len(rows))
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 1.9 * nrows), squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for ax, row, x in zip(axes.flat, rows, images):
        pick = torch.cat([x[i::10][:per_class] for i in range(10)]) if len(x) >= 10 * per_class else x
        order = torch.arange(len(pick)).view(10, -1).t().reshape(-1) if len(pick) == 10 * per_class else None
        grid = make_grid(pick if order is None else pick[order], nrow=10)
        ax.imshow(grid.squeeze(), cmap="gray" if grid.ndim == 2 or grid.shape[-1] == 1 else None)
        how = "" if row["system"] != "teacher" else f" ({row['sampler']}, {row['spacing']})"
        ax.set_title(f"{row['system']} {row['nfe']} NFE{how}\nFD {row['fd_effnet']:.0f}, "
                     f"acc {row.get('class_accuracy', 0):.2f}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", help="DMD student checkpoint (1 step)")
    p.add_argument("--student2", help="DMD2 student checkpoint")
    p.add_argument("--student2-steps", type=int, nargs="+", default=[1, 4])
    p.add_argument("--teacher-specs", nargs="+", default=TEACHER_SPECS, help="NFE:sampler:spacing")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-n", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", required=True)
    p.add_argument("--png")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    old = json.loads(Path(args.json).read_text())["rows"] if Path(args.json).exists() else []
    done = {key(r, r["n_eval"], r["seed"]): r for r in old}
    rows, images = [], []
    for row in systems(args):
        k = key(row, args.n, args.seed)
        if k in done:
            row = {**done[k], "reused": True}
            row.pop("images_per_s", None)
            images.append(draw(row, 10 * 4, args.seed, row_sigmas(row))[0])
        else:
            row, x = quality_row(row, args.n, args.seed)
            row.update(seed=args.seed, reused=False)
            images.append(x[:40])
        rows.append(row)
        print(json.dumps(row), flush=True)
        Path(args.json).write_text(json.dumps({"n": args.n, "seed": args.seed, "rows": rows}, indent=1))
    throughput(rows, args.time_n, args.rounds, args.seed)
    base = next((r for r in rows if r["system"] == "teacher" and r["nfe"] == 50), None)
    for r in rows:
        if base is not None:
            r["fd_ratio_to_teacher50"] = r["fd_effnet"] / base["fd_effnet"]
            r["speedup_vs_teacher50"] = r["images_per_s"] / base["images_per_s"]
            if "class_accuracy" in base:
                r["accuracy_ratio_to_teacher50"] = r["class_accuracy"] / base["class_accuracy"]
    Path(args.json).write_text(json.dumps({"n": args.n, "seed": args.seed, "rows": rows}, indent=1))
    print(f"\n{'system':>8} {'NFE':>4} {'sampler':>22} {'FD-EffNet':>10} {'xT50':>6} {'acc':>6} {'img/s':>9} {'xT50':>7}")
    for r in rows:
        print(f"{r['system']:>8} {r['nfe']:>4} {r['sampler'] + ':' + r['spacing']:>22} {r['fd_effnet']:>10.1f} "
              f"{r.get('fd_ratio_to_teacher50', 0):>6.2f} {r.get('class_accuracy', 0):>6.3f} "
              f"{r['images_per_s']:>9.1f} {r.get('speedup_vs_teacher50', 0):>7.1f}")
    print(f"floor at n={args.n}: {rows[0]['fd_floor']:.1f}")
    if args.png:
        figure(rows, images, args.png)


if __name__ == "__main__":
    main()
