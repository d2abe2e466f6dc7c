"""FD-EffNet against NFE on a trained Fashion-MNIST model: the samplers on real data, not only on the GMM.

Every (sampler, spacing) pair draws the same n images (same seed, so the same x_T and class
labels) at each NFE with the run's classifier-free guidance, and is scored by FD-EffNet against
the test split (with its floor at the same n) and class accuracy (DESIGN.md section 5). A sampler
spec may be ``name:spacing`` or ``name:fitted``, where the grid is fitted to this model on a pilot
batch of other seeds (``latentdiff.sampling.fitted``) and the pilot's model calls are reported.

    python benchmarks/fmnist_fd_vs_nfe.py demo_out/checkpoint --nfe 5 10 20 50 --n 1000 \
        --samplers ddim:trailing dpmpp_2m:karras unipc_bh3:fitted --json benchmarks/results/fmnist_fd_vs_nfe.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from latentdiff.pipelines import load_denoiser
from latentdiff.pipelines.evaluate import balanced_labels, evaluate_images
from latentdiff.pipelines.conditions import Conditioning
from latentdiff.pipelines.diffusion import fit_model_grid, generate, samples_in_bf16


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt")
    p.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    p.add_argument("--samplers", nargs="+", default=["ddim:trailing", "dpmpp_2m:karras", "unipc_bh3:fitted"])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    denoiser, cfg = load_denoiser(args.ckpt)
    labels = balanced_labels(args.n, cfg.model.num_classes) if cfg.model.num_classes else None
    rows = []
    for nfe in args.nfe:
        for spec in args.samplers:
            name, spacing = spec.split(":")
            row = {"sampler": name, "spacing": spacing, "nfe": nfe}
            sigmas = None
            if spacing == "fitted":
                start = time.perf_counter()
                # about 1000 pilot calls per fit: two refined starts at small NFE, one above
                n_starts = 2 if nfe <= 10 else 1
                fit = fit_model_grid(denoiser, name, nfe, guidance=cfg.sample.guidance, max_evals=max(20, 1000 // (nfe * n_starts)),
                                     n_starts=n_starts)
                sigmas = fit.sigmas
                row.update(fit_seconds=round(time.perf_counter() - start, 1), pilot_calls=fit.pilot_calls,
                           pilot_rmse=fit.pilot_rmse, start=fit.start_spacing, start_rmse=fit.start_rmse,
                           sigmas=[round(float(s), 5) for s in sigmas])
            start = time.perf_counter()
            images = generate(denoiser, args.n, Conditioning(class_labels=labels), sampler=name, steps=nfe,
                              spacing=spacing, sigmas=sigmas, guidance=cfg.sample.guidance, seed=args.seed,
                              bf16=samples_in_bf16(cfg))
            row["sample_seconds"] = round(time.perf_counter() - start, 1)
            row.update(evaluate_images(images, labels, cfg, seed=args.seed))
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"ckpt": args.ckpt, "n": args.n, "guidance": cfg.sample.guidance, "runs": rows}, f, indent=1)
    print(f"\n{'NFE':>4} | " + " | ".join(f"{s:>22}" for s in args.samplers) + "   (FD-EffNet / class acc)")
    for nfe in args.nfe:
        cells = [next(r for r in rows if r["nfe"] == nfe and f"{r['sampler']}:{r['spacing']}" == s) for s in args.samplers]
        print(f"{nfe:>4} | " + " | ".join(f"{c['fd_effnet']:>12.1f} / {c.get('class_accuracy', 0):.3f}" for c in cells))
    print(f"floor at n={args.n}: {rows[0]['fd_floor']:.1f}")


if __name__ == "__main__":
    main()
