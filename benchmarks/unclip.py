"""unCLIP (DALL·E 2, issue 19): the CLIP-style models, unCLIP (prior + decoder) against the Imagen-style
pixel model at equal training wall time, the prior's value, and image variations on Fashion-MNIST.

Training (``latentdiff train``, two single-thread lanes side by side; a run folder with a checkpoint
is reused): lane A trains shapes-t2i-pixel (M minutes) then fmnist-prior and fmnist-unclip-decoder,
lane B shapes-prior (M/5) then shapes-unclip-decoder (4M/5); before them the CLIP models
(runs/shapes-clip, runs/fmnist-clip), 8 minutes each side by side, where missing.

Evaluation (after training, every system sampled the same way: 20 DPM-Solver++(2M) steps, Karras
sigmas, guidance 2 with dynamic thresholding, the presets' defaults):
  * FD-EffNet of N samples from the test captions, with its floor FD(train, test) at the same N;
  * prompt adherence on the 60 held-out prompts (30 one-object, 30 two-object; K samples each);
  * diversity: the mean pairwise EfficientNet-feature distance among the K samples of a held-out
    prompt, averaged over prompts (the real images' value, K test images of one caption, beside it);
  * CLIP score (shapes-clip) of the FD samples with their captions (the real test images' beside it);
  * no_prior: the decoder fed the caption's CLIP text embedding in place of an image embedding;
  * variations: V variations of each of S Fashion-MNIST test images; the classifier's class for
    each against the source's label (and against the classifier's class of the source), and the
    smallest pixel L2 distance of a variation to its
    source against the copy floor: the smallest L2 distance from any of the S sources to its
    nearest other image in the training set (two distinct real garments are never nearer).

    python benchmarks/unclip.py --json benchmarks/results/unclip.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from latentdiff.bench.runs import adherence, cached, train_lanes, train_minutes, train_steps

ADHERENCE_KEYS = ("single_object_all_correct", "two_object_all_correct", "all_correct", "attributes")


def shapes_data():
    from latentdiff.data import DataConfig, build_dataset

    cfg = DataConfig(name="shapes", image_size=32, channels=3)
    return build_dataset(cfg, "test"), build_dataset(cfg, "train")


def diversity(images: torch.Tensor, k: int) -> float:
    """Mean pairwise L2 distance of EfficientNet-Lite0 features among each group of k consecutive
    images (the samples of one prompt), averaged over the groups."""
    from latentdiff.eval.features import effnet_features

    feats = torch.as_tensor(effnet_features(images)).float().unflatten(0, (-1, k))   # (P, k, F)
    d = torch.cdist(feats, feats)                                                    # (P, k, k)
    return float(d.sum((1, 2)).mean() / (k * (k - 1)))


def clip_model(runs: Path):
    from latentdiff.pipelines.clip import load_clip

    return load_clip(runs / "shapes-clip" / "checkpoint")


class Systems:
    """The Imagen-style model, unCLIP (prior + decoder) and the decoder without its prior."""

    def __init__(self, runs: Path, args):
        from latentdiff.pipelines import load_model
        from latentdiff.pipelines.unclip import Decoder, load_prior

        self.imagen, _, self.imagen_cfg = load_model(runs / "unclip" / "shapes-t2i-pixel" / "checkpoint")
        self.decoder = Decoder(runs / "unclip" / "shapes-unclip-decoder" / "checkpoint")
        self.prior_ckpt = runs / "unclip" / "shapes-prior" / "checkpoint"
        self.prior, self.prior_cfg, self.prior_text = load_prior(self.prior_ckpt)
        self.decoder.check_prior(self.prior_cfg, self.prior_ckpt)
        self.args = args

    def images(self, name: str, prompts: list[str], seed: int) -> torch.Tensor:
        from latentdiff.pipelines import Conditioning, generate, text_encoder_for
        from latentdiff.pipelines.diffusion import sampling_options
        from latentdiff.pipelines.unclip import sample_image_embeds

        if name == "imagen":
            return generate(self.imagen, len(prompts),
                            Conditioning(prompts=prompts, text_encoder=text_encoder_for(self.imagen_cfg)),
                            seed=seed, progress=True, **sampling_options(self.imagen_cfg.sample))
        if name == "unclip":
            embeds = sample_image_embeds(self.prior, self.prior_cfg, self.prior_text, prompts, seed=seed,
                                         progress=True)
        else:  # no_prior: the caption's CLIP text embedding where the image embedding goes
            embeds = torch.cat([self.prior_text.condition(prompts[i:i + 500])["pooled"]
                                for i in range(0, len(prompts), 500)])
        return self.decoder.decode(embeds, prompts, seed=seed, progress=True)


def system_report(systems: Systems, name: str, fd_prompts, held_out, k: int, parts: Path) -> dict:
    from latentdiff.clip.metrics import clip_score
    from latentdiff.eval import fd_with_floor

    test, train = shapes_data()
    clip, _, encoder = clip_model(systems.args.runs_dir)
    repeated = [q for q in held_out for _ in range(k)]
    fd_images, adh_images = systems.images(name, fd_prompts, 0), systems.images(name, repeated, 7)
    torch.save(adh_images, parts / f"{name}-adherence-images.pt")  # for the README figure
    report = fd_with_floor(fd_images, test, train) | {
        key: v for key, v in adherence(adh_images, held_out, k).items() if key in ADHERENCE_KEYS}
    report["diversity"] = diversity(adh_images, k)
    report["clip_score"] = clip_score(clip, fd_images, fd_prompts, encoder)
    return report


def real_references(fd_prompts, k: int, runs: Path) -> dict:
    """The real test images' CLIP score with their captions, and their diversity: k test images of
    each of the most frequent test captions (the same measure as the samples')."""
    from collections import Counter

    from latentdiff.clip.metrics import clip_score

    test, _ = shapes_data()
    clip, _, encoder = clip_model(runs)
    n = len(fd_prompts)
    real = test.get_batch(torch.arange(n))["x"]
    groups = [c for c, m in Counter(test.captions).most_common() if m >= k][:60]
    index = [i for c in groups for i in [j for j, x in enumerate(test.captions) if x == c][:k]]
    return {"clip_score_real": clip_score(clip, real, list(test.captions[:n]), encoder),
            "diversity_real": diversity(test.get_batch(torch.tensor(index))["x"], k),
            "diversity_real_captions": len(groups)}


def variations_report(runs: Path, n_sources: int, n_variations: int, parts: Path, guidance: float | None = None,
                      seed: int = 0) -> dict:
    from latentdiff.data import DataConfig, build_dataset
    from latentdiff.eval.classifier import class_accuracy, load_or_train_classifier
    from latentdiff.pipelines.unclip import Decoder

    decoder = Decoder(runs / "unclip" / "fmnist-unclip-decoder" / "checkpoint")
    data = DataConfig(name="fmnist", image_size=32, channels=1)
    test, train = build_dataset(data, "test"), build_dataset(data, "train")
    index = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n_sources]
    batch = test.get_batch(index)
    sources, labels = batch["x"], batch["label"]
    variations = decoder.vary(sources, n_variations, seed=seed, progress=True, guidance=guidance)
    torch.save({"sources": sources, "variations": variations}, parts / "variations.pt")
    classifier = load_or_train_classifier("fmnist", 32)
    flat = lambda x: x.flatten(1).float()  # noqa: E731
    l2 = (flat(variations) - flat(sources).repeat_interleave(n_variations, 0)).norm(dim=1)
    train_x = flat(train.get_batch(torch.arange(len(train)))["x"])
    nearest = torch.cdist(flat(sources), train_x).min(dim=1).values  # (S,): each source's nearest real image
    with torch.no_grad():
        predicted = classifier.eval()(sources).argmax(-1)  # the classifier's class of each source
    return {"same_class_rate": class_accuracy(classifier, variations, labels.repeat_interleave(n_variations)),
            "same_prediction_rate": class_accuracy(classifier, variations, predicted.repeat_interleave(n_variations)),
            "classifier_accuracy_on_sources": class_accuracy(classifier, sources, labels),
            "guidance": decoder.cfg.sample.guidance if guidance is None else guidance,
            "min_pixel_l2": float(l2.min()), "median_pixel_l2": float(l2.median()),
            "copy_floor": float(nearest.min()), "median_nearest_train_l2": float(nearest.median()),
            "n_sources": n_sources, "n_variations": n_variations, "steps": decoder.cfg.sample.steps,
            "train_minutes": train_minutes(runs / "unclip" / "fmnist-unclip-decoder")}


def clip_report(runs: Path, parts: Path) -> dict:
    from latentdiff.pipelines.clip import evaluate_clip, load_clip

    report = {}
    for name in ("fmnist-clip", "shapes-clip"):
        model, cfg, encoder = load_clip(runs / name / "checkpoint")
        report |= cached(parts / f"{name}.json", lambda: evaluate_clip(model, cfg, encoder=encoder))
        report[f"{name}_train_minutes"] = train_minutes(runs / name)
    return report


def figures(runs: Path, parts: Path, held_out: list[str], k: int, docs: Path) -> None:
    """README figures: held-out prompts (unCLIP vs Imagen), Fashion-MNIST variations, interpolation strips."""
    from latentdiff.data import DataConfig, build_dataset
    from latentdiff.io.images import save_grid, save_prompt_rows
    from latentdiff.pipelines.unclip import Decoder

    pictures = {name: torch.load(parts / f"{name}-adherence-images.pt") for name in ("unclip", "imagen")}
    half = len(held_out) // 2
    rows, names = [], []
    for i in (0, 1, 2, half, half + 1, half + 2):
        for name, images in pictures.items():
            rows.append(images[i * k:i * k + 6])
            names.append(f"{name}: {held_out[i]}")
    save_prompt_rows(torch.cat(rows), names, docs / "unclip_samples.png",
                     title="held-out prompts: unCLIP (prior + decoder) vs Imagen-style, equal training time")
    var = torch.load(parts / "variations.pt")
    sources, variations = var["sources"][:8], var["variations"]
    v = len(variations) // len(var["sources"])
    grid = torch.cat([torch.cat([s[None], variations[i * v:i * v + 7]]) for i, s in enumerate(sources)])
    save_grid(grid, docs / "unclip_variations.png", nrow=8,
              caption="Fashion-MNIST test images (first column) and 7 unCLIP variations of each")
    strips = []
    fmnist = build_dataset(DataConfig(name="fmnist", image_size=32, channels=1), "test")
    labels = fmnist.get_batch(torch.arange(100))["label"].tolist()
    first = [labels.index(c) for c in (9, 0, 1, 8)]  # ankle boot -> T-shirt, trouser -> bag
    for name, data, index in (("fmnist-unclip-decoder", fmnist, first),
                              ("shapes-unclip-decoder", build_dataset(DataConfig(name="shapes", image_size=32,
                                                                                 channels=3), "test"), [0, 1, 2, 3])):
        decoder = Decoder(runs / "unclip" / name / "checkpoint")
        x = data.get_batch(torch.tensor(index))["x"]
        for a, b in ((0, 1), (2, 3)):
            strip = decoder.interpolate(x[a], x[b], 8, seed=0)
            strips.append(strip if strip.shape[1] == 3 else strip.expand(-1, 3, -1, -1))
    save_grid(torch.cat(strips), docs / "unclip_interpolation.png", nrow=8,
              caption="slerp between two test images' CLIP embeddings, same noise: Fashion-MNIST (rows 1-2), shapes")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="total training wall time of each shapes system")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--n", type=int, default=1000, help="samples for FD-EffNet and the CLIP score")
    p.add_argument("--k", type=int, default=8, help="samples per held-out prompt (adherence, diversity)")
    p.add_argument("--sources", type=int, default=100, help="Fashion-MNIST test images varied")
    p.add_argument("--variations", type=int, default=8, help="variations per source")
    p.add_argument("--vary-guidance", type=float, help="the decoder's guidance on the image embedding for the "
                   "variations (default: fmnist-unclip-decoder's sample.guidance)")
    p.add_argument("--json", default="benchmarks/results/unclip.json")
    p.add_argument("--figures", type=Path, default=Path("docs"))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    runs, m = args.runs_dir, args.minutes
    lanes = runs / "unclip"
    lanes.mkdir(parents=True, exist_ok=True)
    # the CLIP models, 8 minutes each side by side (README: zero-shot 0.98 of the classifier, R@1 0.89)
    train_lanes([[("shapes-clip", "shapes-clip", 8.0, [])], [("fmnist-clip", "fmnist-clip", 8.0, [])]], runs)
    train_lanes([[("shapes-t2i-pixel", "shapes-t2i-pixel", m, []), ("fmnist-prior", "fmnist-prior", None, []),
                  ("fmnist-unclip-decoder", "fmnist-unclip-decoder", None, [])],
                 [("shapes-prior", "shapes-prior", m / 5, []),
                  ("shapes-unclip-decoder", "shapes-unclip-decoder", 4 * m / 5, [])]], lanes)

    from latentdiff.data.shapes import held_out_prompts

    parts = lanes / "parts"
    parts.mkdir(exist_ok=True)
    test, _ = shapes_data()
    fd_prompts = [test.captions[i % len(test.captions)] for i in range(args.n)]
    held_out = held_out_prompts()
    systems = Systems(runs, args)
    report = {"clip": clip_report(runs, parts)}
    for name in ("unclip", "imagen", "no_prior"):
        report[name] = cached(parts / f"{name}.json",
                              lambda name=name: system_report(systems, name, fd_prompts, held_out, args.k, parts))
    report["unclip"]["train_minutes"] = sum(train_minutes(lanes / r) for r in ("shapes-prior", "shapes-unclip-decoder"))
    report["unclip"]["train_steps"] = {r: train_steps(lanes / r) for r in ("shapes-prior", "shapes-unclip-decoder")}
    report["imagen"]["train_minutes"] = train_minutes(lanes / "shapes-t2i-pixel")
    report["imagen"]["train_steps"] = {"shapes-t2i-pixel": train_steps(lanes / "shapes-t2i-pixel")}
    report["real"] = cached(parts / "real.json", lambda: real_references(fd_prompts, args.k, runs))
    report["variations"] = cached(parts / "variations.json", lambda: variations_report(
        runs, args.sources, args.variations, parts, args.vary_guidance))
    report["settings"] = {"n_fd": args.n, "k_per_prompt": args.k, "held_out_prompts": len(held_out),
                          "threads": args.threads, "machine": f"{os.cpu_count()} CPU cores",
                          "sampling": "dpmpp_2m, 20 steps, karras, guidance 2, dynamic thresholding (all three); "
                                      "prior: dpmpp_2m, 20 steps, guidance 1, 2 candidates"}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    figures(runs, parts, held_out, args.k, args.figures)
    print(json.dumps({k: v for k, v in report.items() if k != "clip"}, indent=2))


if __name__ == "__main__":
    main()
