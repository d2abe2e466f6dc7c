"""Classifier-free guidance scale against prompt adherence and FD-EffNet on ``shapes``: the trade-off
curve of Ho & Salimans 2022 (Fig. 2) and Imagen (Saharia et al. 2022, Fig. 4), for a text-to-image
checkpoint trained with the ``shapes-t2i`` preset.

For every scale: prompt adherence on the held-out prompts (``n_per_prompt`` samples each, the exact
parser of ``latentdiff.eval.adherence``; single- and two-object all-correct rates), and FD-EffNet of
``n_fd`` samples drawn from the test split's captions against the test images, beside its floor
FD(train, test) at the same N. All scales share seeds, so they differ only by guidance.

    python benchmarks/guidance_sweep.py runs/shapes-t2i/checkpoint --scales 1 2 3 4 6 8 10 \
        --json benchmarks/results/guidance_sweep.json --png docs/guidance_sweep.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

from latentdiff.data.shapes import held_out_prompts
from latentdiff.pipelines import evaluate_adherence, evaluate_model, load_model, text_encoder_for

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def sweep(ckpt: str, scales: list[float], n_per_prompt: int, n_fd: int, steps: int | None) -> list[dict]:
    denoiser, autoencoder, cfg = load_model(ckpt)
    encoder, prompts = text_encoder_for(cfg), held_out_prompts()
    rows = []
    for w in scales:
        adherence, _ = evaluate_adherence(denoiser, cfg, prompts, n_per_prompt, guidance=w, steps=steps,
                                          autoencoder=autoencoder, text_encoder=encoder, progress=False)
        fd, _, _ = evaluate_model(denoiser, cfg, n_fd, guidance=w, steps=steps, autoencoder=autoencoder,
                                  text_encoder=encoder, progress=False)
        row = {"guidance": w, **{k: adherence["overall"][k] for k in
                                 ("all_correct", "single_object_all_correct", "two_object_all_correct")},
               "attributes": adherence["overall"]["attributes"], "fd_effnet": fd["fd_effnet"],
               "fd_floor": fd["fd_floor"], "n_fd": n_fd, "n_per_prompt": n_per_prompt}
        print(json.dumps(row))
        rows.append(row)
    return rows


def plot(rows: list[dict], path: str) -> None:
    w = [r["guidance"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(w, [r["single_object_all_correct"] for r in rows], "o-", label="one object, all correct")
    left.plot(w, [r["two_object_all_correct"] for r in rows], "s-", label="two objects + relation, all correct")
    left.set(xlabel="guidance scale w", ylabel="fraction of samples", title="prompt adherence (held-out prompts)",
             ylim=(0, 1))
    left.legend(fontsize=8)
    twin = left.twinx()
    twin.plot(w, [r["fd_effnet"] for r in rows], "k--", alpha=0.6)
    twin.set_ylabel(f"FD-EffNet, N={rows[0]['n_fd']} (dashed)")
    right.plot([r["fd_effnet"] for r in rows], [r["all_correct"] for r in rows], "o-")
    for r in rows:
        right.annotate(f"w={r['guidance']:g}", (r["fd_effnet"], r["all_correct"]), fontsize=7)
    right.axvline(rows[0]["fd_floor"], color="grey", ls=":", label="FD floor (train vs test)")
    right.set(xlabel="FD-EffNet (lower is better)", ylabel="all-correct rate", title="the guidance trade-off")
    right.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt")
    parser.add_argument("--scales", type=float, nargs="+", default=[1, 2, 3, 4, 6, 8, 10])
    parser.add_argument("--n-per-prompt", type=int, default=8)
    parser.add_argument("--n-fd", type=int, default=1000)
    parser.add_argument("--steps", type=int, help="sampler steps (default: the run's)")
    parser.add_argument("--json")
    parser.add_argument("--png")
    args = parser.parse_args()
    rows = sweep(args.ckpt, args.scales, args.n_per_prompt, args.n_fd, args.steps)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"ckpt": args.ckpt, "rows": rows}, indent=2))
    if args.png:
        plot(rows, args.png)


if __name__ == "__main__":
    main()
