"""Density estimation of a checkpoint on its test split: the variational bound and the PF-ODE likelihood
in bits/dim (``eval.likelihood_vlb``, ``eval.likelihood_ode``). Orchestration only: load, pick images, batch.

Class-conditional checkpoints are scored as the unconditional model p(x) (the null class their CFG
label dropout trained) unless ``class_cond``, which gives p(x | y) with the test labels. Latent
checkpoints are scored on the encoder's latents z: the number is -log p(z) per latent dimension,
the decoder's term not included.
"""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from latentdiff.data import build_dataset
from latentdiff.eval.likelihood_ode import bits_per_dim, dequantize, ode_log_likelihood
from latentdiff.eval.likelihood_vlb import (importance_proposal, mean_and_stderr, uniform_proposal,
                                            vlb_bits_per_dim)
from latentdiff.io.checkpoint import read_config
from latentdiff.pipelines.diffusion import load_model

METHODS = ("vlb", "ode")


def check_likelihood_checkpoint(ckpt, methods: tuple[str, ...]) -> dict:
    """The checkpoint's config, or ValueError saying why ``methods`` do not apply to it."""
    config = read_config(ckpt)
    task = config.get("task", "diffusion")
    if task == "dmd":
        steps = config.get("sample", {}).get("steps", "few")
        raise ValueError(f"{ckpt} is a DMD student, a {steps}-step generator without a denoiser at every "
                         f"continuous noise level: the probability-flow ODE cannot integrate it and its "
                         f"variational bound is not defined ({'/'.join(methods)} asked); evaluate its teacher")
    if task != "diffusion" or "diffusion" not in config:
        raise ValueError(f"{ckpt} is a {task!r} checkpoint; eval nll takes a diffusion model")
    if config.get("text") is not None:
        raise ValueError(f"{ckpt} is a text-to-image model; eval nll supports pixel and latent models "
                         "without text conditioning")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; valid: {', '.join(METHODS)}")
    if config["diffusion"].get("parameterisation") == "flow" and "vlb" in methods:
        raise ValueError(f"{ckpt} is a rectified-flow model: its variational bound needs a discrete VP Markov "
                         "chain; use --method ode (the probability-flow ODE's exact likelihood)")
    return config


def _test_images(cfg, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n test images (x (n, C, S, S) in [-1, 1], labels (n,)): all of them in order if n >= the split."""
    test = build_dataset(cfg.data, "test")
    index = torch.arange(len(test)) if n >= len(test) else \
        torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n]
    batch = test.get_batch(index)
    return batch["x"], batch["label"]


def _cond(cfg, labels: torch.Tensor, class_cond: bool) -> dict | None:
    if not cfg.model.num_classes:
        return None
    return {"class_labels": labels if class_cond else torch.full_like(labels, cfg.model.num_classes)}


def _vlb(denoiser, cfg, x, labels, *, latent, class_cond, batch_size, n_t, t_sampling, seed, progress) -> dict:
    variances = ("learned",) if cfg.diffusion.learned_variance else ("small", "large")
    g = torch.Generator().manual_seed(seed)
    kw = dict(clip=not latent, discretized=not latent)
    start = time.perf_counter()
    if t_sampling == "importance":
        pilot = slice(0, min(32, len(x)))
        proposal = importance_proposal(denoiser, denoiser.schedule, x[pilot], variance=variances[0], generator=g,
                                       cond=_cond(cfg, labels[pilot], class_cond), **kw)
    elif t_sampling == "uniform":
        proposal = uniform_proposal(denoiser.schedule)
    elif t_sampling == "all":
        proposal = None
    else:
        raise ValueError(f"unknown t sampling {t_sampling!r}; valid: importance, uniform, all")
    parts = {v: {k: [] for k in ("total", "prior", "decoder", "kl")} for v in variances}
    bar = tqdm(range(0, len(x), batch_size), desc="nll vlb", disable=not progress)
    for i in bar:
        sl = slice(i, i + batch_size)
        out = vlb_bits_per_dim(denoiser, denoiser.schedule, x[sl], cond=_cond(cfg, labels[sl], class_cond),
                               variances=variances, proposal=proposal, n_t=n_t, generator=g, **kw)
        for v in variances:
            for k in parts[v]:
                parts[v][k].append(out[v][k])
        bar.set_postfix(bpd=f"{float(torch.cat(parts[variances[0]]['total']).mean()):.3f}")
    by_variance = {}
    for v in variances:
        mean, se = mean_and_stderr(torch.cat(parts[v]["total"]))
        terms = {f"{k}_bits_per_dim": float(torch.cat(parts[v][k]).mean()) for k in ("prior", "decoder", "kl")}
        by_variance[v] = {"bits_per_dim": mean, "stderr": se, **terms}
    main = by_variance[variances[0]]
    return {"bits_per_dim": main["bits_per_dim"], "stderr": main["stderr"], "n": len(x), "variance": variances[0],
            "by_variance": by_variance, "t_sampling": t_sampling, "n_t": n_t,
            "seconds": round(time.perf_counter() - start, 1)}


def _ode(denoiser, cfg, x, labels, *, latent, class_cond, batch_size, n_probes, probe, rtol, atol, seed, progress,
         max_minutes) -> dict:
    g = torch.Generator().manual_seed(seed)
    dim = x[0].numel()
    bpd, probe_var, nfe = [], [], []
    start = time.perf_counter()
    bar = tqdm(range(0, len(x), batch_size), desc="nll ode", disable=not progress)
    for i in bar:
        sl = slice(i, i + batch_size)
        xb = x[sl] if latent else dequantize(x[sl], g)
        out = ode_log_likelihood(denoiser, xb, cond=_cond(cfg, labels[sl], class_cond), n_probes=n_probes,
                                 probe=probe, rtol=rtol, atol=atol, generator=g)
        per_probe = bits_per_dim(out["logp_probes"], dim, None if latent else 127.5)  # (K, B)
        bpd.append(per_probe.mean(0))
        if n_probes > 1:
            probe_var.append(per_probe.var(0) / n_probes)
        nfe.append(out["nfe"])
        bar.set_postfix(bpd=f"{float(torch.cat(bpd).mean()):.3f}", nfe=out["nfe"])
        if max_minutes is not None and time.perf_counter() - start > 60 * max_minutes:
            break
    values = torch.cat(bpd)
    mean, se = mean_and_stderr(values)
    report = {"bits_per_dim": mean, "stderr": se, "n": len(values), "n_asked": len(x), "divergence": "hutchinson",
              "n_probes": n_probes, "probe": probe, "rtol": rtol, "atol": atol, "solver": "scipy RK45",
              "sigma_min": denoiser.sigma_min, "sigma_max": denoiser.sigma_max, "batch_size": batch_size,
              "mean_nfe": sum(nfe) / len(nfe), "seconds": round(time.perf_counter() - start, 1),
              "dequantisation": None if latent else "uniform, 1 draw per image"}
    if probe_var:  # the part of the standard error that is Hutchinson noise
        report["probe_stderr"] = float(torch.cat(probe_var).mean().sqrt() / math.sqrt(len(values)))
    return report


def evaluate_nll(ckpt, methods: tuple[str, ...] = ("vlb",), n: int = 1000, *, seed: int = 0, use_ema: bool = True,
                 class_cond: bool = False, batch_size: int = 250, ode_batch_size: int = 100, n_t: int = 1,
                 t_sampling: str = "importance", n_probes: int = 1, probe: str = "rademacher", rtol: float = 1e-5,
                 atol: float = 1e-5, ode_n: int | None = None, ode_max_minutes: float | None = None,
                 progress: bool = True) -> dict:
    """Bits/dim of a diffusion checkpoint on the first-n (seeded random n) test images, per method.

    ``methods`` from ("vlb", "ode"); ``ode_n`` images for the ODE (default n), stopping early after
    ``ode_max_minutes`` (the report's ``n`` is what was done). Returns a JSON-ready report with
    {"vlb": {...}, "ode": {...}}, each holding bits_per_dim, stderr, n and the settings, and
    ``covers``: what the number is the likelihood of. Raises ValueError for a checkpoint neither
    method applies to (DMD students, autoencoders, text-to-image models).
    """
    config = check_likelihood_checkpoint(ckpt, tuple(methods))
    denoiser, autoencoder, cfg = load_model(ckpt, use_ema=use_ema)
    latent = cfg.autoencoder is not None
    x, labels = _test_images(cfg, n, seed)
    if latent:
        with torch.no_grad():
            x = torch.cat([autoencoder.encode(x[i:i + 250]) for i in range(0, len(x), 250)])
    covers = (f"latent z of {cfg.autoencoder} only: -log p(z) per latent dimension; decoder term not included"
              if latent else "pixels: 8-bit test images, [0, 255] -> [-1, 1], bits per pixel dimension")
    report = {"checkpoint": str(ckpt), "covers": covers, "n": len(x), "seed": seed, "use_ema": use_ema,
              "parameterisation": cfg.diffusion.parameterisation, "schedule": cfg.diffusion.schedule,
              "learned_variance": cfg.diffusion.learned_variance, "description": config.get("description", ""),
              "condition": ("p(x | y), test labels" if class_cond else "p(x), the null class (unconditional)")
              if cfg.model.num_classes else "p(x), unconditional model"}
    common = dict(latent=latent, class_cond=class_cond, seed=seed, progress=progress)
    if "vlb" in methods:
        report["vlb"] = _vlb(denoiser, cfg, x, labels, batch_size=batch_size, n_t=n_t, t_sampling=t_sampling, **common)
    if "ode" in methods:
        m = len(x) if ode_n is None else min(ode_n, len(x))
        report["ode"] = _ode(denoiser, cfg, x[:m], labels[:m], batch_size=ode_batch_size, n_probes=n_probes,
                             probe=probe, rtol=rtol, atol=atol, max_minutes=ode_max_minutes, **common)
    return report
