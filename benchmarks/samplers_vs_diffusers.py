"""Sampler accuracy at equal NFE: latentdiff's samplers vs diffusers' schedulers on the exact-score GMM.

Both libraries sample the Gaussian mixture of ``latentdiff.eval.gmm`` with its exact denoiser, so the
only error is the sampler's. latentdiff runs every registered ODE/SDE sampler with the grid spacings
worth trying (``schedules.SPACINGS``); diffusers runs DDIM, DPM-Solver++ 2M (with and without Karras
sigmas), DPM-Solver singlestep, UniPC, DEIS, Euler, Heun, LMS, Euler-ancestral and DDPM, each with
its default timestep spacing and with ``trailing`` (DDIM/DDPM with clip_sample=False: clipping to the
image range [-1, 1] is not part of the sampler), driven by the eps-model built from the exact
denoiser: at timestep t (sigma = schedule.t_to_sigma(t), exact at integer t, log-linear between, as
diffusers interpolates) eps = (x_t - sqrt(abar) D*(x_t / sqrt(abar), sigma)) / sqrt(1 - abar).
Both use the same betas (diffusers gets ``trained_betas``).

Same x_T, same reference. x_T = x0 + sigma_max n (VE view, sigma_max = the schedule's, t = T - 1);
the reference is the PF-ODE from x_T at sigma_max to sigma_min, then the x0 jump (``reference_ode``).
Every run starts from the same VP-scaled x_T / sqrt(1 + sigma_max^2) (times each library's
``init_noise_sigma`` for diffusers, times sqrt(1 + sigmas[0]^2) for ours). A run whose first
sigma is below sigma_max (``leading`` spacing in both libraries, e.g. diffusers' DDIM/DDPM default)
thus treats x_T as if it were at its first timestep and is charged that error, as in real use.

Fitted grids. For FIT_SAMPLERS latentdiff also runs a grid fitted to this mixture
(``latentdiff.sampling.fitted``): Nelder-Mead on a pilot batch of --n-pilot x_T drawn from other
seeds (seed + 5000), scored against their own reference ODE solutions, then applied unchanged to
the scored x_T. Its JSON run records the pilot size, the pilot's model calls (a one-off cost per
mixture, sampler and NFE, not counted in ``nfe``) and the fitted sigmas.

NFE counts real model calls in both libraries; a sampler is skipped at an NFE it cannot hit exactly
(e.g. Heun: 2 steps - 1 calls, so no even NFE; multistep orders above the step count) and the reason
is recorded. ODE-RMSE (per coordinate) is reported for deterministic samplers only (null for
stochastic ones); SW2 to fresh true samples for all, with its floor.

    python benchmarks/samplers_vs_diffusers.py [--dim 64] [--components 8] [--schedule linear] [--n 5000]
        [--seed 0] [--n-pilot 4000] [--max-evals 300] [--fit-samplers dpmpp_3m unipc_bh3] [--json PATH] [--png PATH]
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import time
import warnings

import torch

from latentdiff.eval.gmm import GMMDenoiser, make_gmm, reference_ode, sliced_w2
from latentdiff.sampling import NFE_OF_STEPS, get_sampler, steps_for_nfe
from latentdiff.sampling.fitted import fit_sigmas
from latentdiff.schedules import DiscreteSchedule, sigma_grid

NFES = (3, 4, 5, 6, 8, 10, 15, 20, 25, 50)
STOCHASTIC = {"ddpm", "ddim_eta1", "euler_a", "dpmpp_2m_sde", "EulerAncestral", "DDPM"}
OURS = ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc_bh2", "unipc_bh3", "lms", "euler", "heun", "euler_a", "ddpm", "dpmpp_2m_sde")
OUR_SPACINGS = ("trailing", "karras", "logsnr", "balanced")
FIT_SAMPLERS = ("dpmpp_3m", "unipc_bh3")  # grids fitted on a pilot batch (latentdiff.sampling.fitted)
PILOT_SEED_OFFSET = 5_000  # pilot noise seeds never overlap the scored x_T (seed) or the true sets (seed + 10000 + j)
DDPM_SPACINGS = ("leading", "linspace")  # the DDPM/DDIM papers' own grids, tried for those two as well


def diffusers_schedulers() -> dict:
    """name -> (scheduler class, extra config)."""
    import diffusers as d

    d.utils.logging.set_verbosity_error()  # DPM-Solver's lower_order_final notices, once per run
    no_clip = {"clip_sample": False}  # the image-range clipping to [-1, 1] of the defaults would cut the GMM's tails
    return {"DDIM": (d.DDIMScheduler, no_clip), "DPM++2M": (d.DPMSolverMultistepScheduler, {}),
            "DPM++2M-Karras": (d.DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
            "DPM-singlestep": (d.DPMSolverSinglestepScheduler, {}), "UniPC": (d.UniPCMultistepScheduler, {}),
            "DEIS": (d.DEISMultistepScheduler, {}), "Euler": (d.EulerDiscreteScheduler, {}),
            "Heun": (d.HeunDiscreteScheduler, {}), "LMS": (d.LMSDiscreteScheduler, {}),
            "EulerAncestral": (d.EulerAncestralDiscreteScheduler, {}), "DDPM": (d.DDPMScheduler, no_clip)}


def score(out: torch.Tensor, name: str, ref: torch.Tensor, true: torch.Tensor) -> dict:
    """ODE-RMSE per coordinate (deterministic samplers only) and SW2 to true samples of out (N, D)."""
    bad = not bool(torch.isfinite(out).all())
    rmse = None if name in STOCHASTIC or bad else float(((out.double() - ref) ** 2).mean().sqrt())
    return {"ode_rmse": rmse, "sw2": None if bad else sliced_w2(out, true)}


def run_ours(name, spacing, nfe, gmm, schedule, x_vp, seed):
    """One latentdiff run at exactly nfe model calls; returns (result dict, None) or (None, reason)."""
    steps = steps_for_nfe(name, nfe)
    if NFE_OF_STEPS.get(name, lambda n, **o: n)(steps) != nfe:
        return None, f"no step count gives exactly {nfe} calls"
    sigmas = sigma_grid(schedule, steps, spacing)
    D = GMMDenoiser(gmm)
    try:
        out = get_sampler(name)(D, x_vp * (1 + sigmas[0] ** 2).sqrt(), sigmas,
                                generator=torch.Generator().manual_seed(seed + 1))
    except ValueError as e:
        return None, str(e)
    return out, D.calls


def make_pilot(gmm, schedule, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pilot (x_T (n, D), reference (n, D)) for fitting grids: the same construction as the test x_T, other seeds."""
    g = torch.Generator().manual_seed(seed)
    x_T = gmm.sample(n, g)[0] + schedule.sigma_max * torch.randn(n, gmm.dim, generator=g, dtype=torch.float64)
    return x_T, reference_ode(gmm, x_T, schedule.sigma_max, schedule.sigma_min)


def run_fitted(name, nfe, gmm, schedule, pilot, x_T, ref, true, max_evals) -> dict:
    """Fit an nfe-call grid for sampler ``name`` on the pilot (``latentdiff.sampling.fitted``), then score it on x_T."""
    starts = {sp: sigma_grid(schedule, nfe, sp) for sp in OUR_SPACINGS}
    fit = fit_sigmas(get_sampler(name), GMMDenoiser(gmm), *pilot, starts, schedule.sigma_min, max_evals)
    D = GMMDenoiser(gmm)
    out = get_sampler(name)(D, x_T.clone(), fit.sigmas)
    return {"library": "latentdiff", "sampler": name, "schedule": "fitted", "nfe": D.calls, **score(out, name, ref, true),
            "pilot": {"n": len(pilot[0]), "calls": fit.pilot_calls, "rmse": fit.pilot_rmse,
                      "start": fit.start_spacing, "start_rmse": fit.start_rmse},
            "sigmas": [round(float(v), 5) for v in fit.sigmas]}


def run_diffusers(cls, config, spacing, nfe, gmm, schedule, x_vp, seed):
    """One diffusers run at exactly nfe eps-model calls; returns (x0 (N, D), calls) or (None, reason)."""
    sched = cls(num_train_timesteps=schedule.T, trained_betas=schedule.betas.numpy(),
                **({"timestep_spacing": spacing} if spacing else {}), **config)
    steps = next((s for s in range(nfe, 0, -1) if _n_calls(sched, s) == nfe), None)
    if steps is None:
        return None, f"no num_inference_steps gives exactly {nfe} calls"
    sched.set_timesteps(steps)
    calls = 0
    takes_generator = "generator" in inspect.signature(sched.step).parameters
    kw = {"generator": torch.Generator().manual_seed(seed + 1)} if takes_generator else {}
    x = x_vp * sched.init_noise_sigma
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        sigma = schedule.t_to_sigma(torch.as_tensor(t, dtype=torch.float64).reshape(1))
        abar = 1 / (1 + sigma**2)
        x0 = gmm.denoise(inp / abar.sqrt(), sigma.expand(len(x)))
        eps, calls = (inp - abar.sqrt() * x0) / (1 - abar).sqrt(), calls + 1
        x = sched.step(eps, t, x, **kw).prev_sample
    return x, calls


def _n_calls(sched, steps: int) -> int:
    try:
        sched.set_timesteps(steps)
    except Exception:
        return -1
    return len(sched.timesteps)


def run_all(args) -> dict:
    """All runs of both libraries; returns the JSON document."""
    schedule = DiscreteSchedule(args.schedule.replace("-", "_"))
    gmm = make_gmm(args.dim, args.components, seed=args.seed)
    g = torch.Generator().manual_seed(args.seed)
    x0_true, _ = gmm.sample(args.n, g)
    x_T = x0_true + schedule.sigma_max * torch.randn(args.n, gmm.dim, generator=g, dtype=torch.float64)
    true, true2 = (gmm.sample(args.n, torch.Generator().manual_seed(args.seed + 10_000 + j))[0] for j in range(2))
    ref = reference_ode(gmm, x_T, schedule.sigma_max, schedule.sigma_min)
    x_vp = x_T / math.sqrt(1 + schedule.sigma_max**2)
    pilot = make_pilot(gmm, schedule, args.n_pilot, args.seed + PILOT_SEED_OFFSET) if args.n_pilot else None
    runs, skipped = [], []
    configs = [("latentdiff", s, sp, None) for s in OURS
               for sp in OUR_SPACINGS + (DDPM_SPACINGS if s in ("ddim", "ddpm") else ())]
    configs += [("diffusers", s, sp, v) for s, v in diffusers_schedulers().items()
                for sp in ((None, "trailing") if s != "DPM-singlestep" else (None,))]
    start = time.perf_counter()
    for nfe in args.nfe:
        print(f"NFE {nfe} ({time.perf_counter() - start:.0f} s so far)", file=sys.stderr, flush=True)
        for lib, name, spacing, dcfg in configs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if lib == "latentdiff":
                    out, info = run_ours(name, spacing, nfe, gmm, schedule, x_vp, args.seed)
                else:
                    try:
                        out, info = run_diffusers(*dcfg, spacing, nfe, gmm, schedule, x_vp, args.seed)
                    except Exception as e:  # record diffusers' failures, do not hide them
                        out, info = None, f"{type(e).__name__}: {e}"
            label = spacing or "default"
            if out is None:
                skipped.append({"library": lib, "sampler": name, "schedule": label, "nfe": nfe, "why": info})
                continue
            runs.append({"library": lib, "sampler": name, "schedule": label, "nfe": info,
                         **score(out, name, ref, true)})
        for name in args.fit_samplers if pilot else ():
            runs.append(run_fitted(name, nfe, gmm, schedule, pilot, x_T, ref, true, args.max_evals))
    return {"nfe": list(args.nfe), "floor": {"sw2": sliced_w2(true2, true)}, "runs": runs, "skipped": skipped,
            "config": {k: v for k, v in vars(args).items() if k not in ("json", "png")}}


def best(doc: dict, lib: str, nfe: int, metric: str, fitted: bool = True):
    """The run of ``lib`` with the lowest ``metric`` at ``nfe`` (fitted grids included or not), or None."""
    cands = [r for r in doc["runs"] if r["library"] == lib and r["nfe"] == nfe and r[metric] is not None
             and (fitted or r["schedule"] != "fitted")]
    return min(cands, key=lambda r: r[metric], default=None)


def print_tables(doc: dict) -> None:
    for metric in ("ode_rmse", "sw2"):
        print(f"\nbest {metric} per library (SW2 floor {doc['floor']['sw2']:.4f})")
        print(f"{'NFE':>4} | {'latentdiff':>9} {'(sampler / spacing)':<26} | "
              f"{'diffusers':>9} {'(scheduler / spacing)':<30} | ratio")
        for nfe in doc["nfe"]:
            a, b = best(doc, "latentdiff", nfe, metric), best(doc, "diffusers", nfe, metric)
            fa = f"{a[metric]:9.4f} {a['sampler'] + ' / ' + a['schedule']:<26}" if a else f"{'-':>9} {'':<26}"
            fb = f"{b[metric]:9.4f} {b['sampler'] + ' / ' + b['schedule']:<30}" if b else f"{'-':>9} {'':<30}"
            ratio = f"{a[metric] / b[metric]:.3f}" if a and b and b[metric] > 0 else "-"
            c = best(doc, "latentdiff", nfe, metric, fitted=False)
            fc = f"{c[metric]:.4f} {c['sampler']} / {c['schedule']}" if c else "-"
            print(f"{nfe:>4} | {fa} | {fb} | {ratio}   (standard grids only: {fc})")


def plot(doc: dict, path: str) -> None:
    """ODE-RMSE and SW2 against NFE (log-log): every run faint, best of each library bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"latentdiff": "tab:blue", "diffusers": "tab:orange"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric in zip(axes, ("ode_rmse", "sw2")):
        curves = {}
        for r in doc["runs"]:
            if r[metric] is not None:
                curves.setdefault((r["library"], r["sampler"], r["schedule"]), []).append((r["nfe"], r[metric]))
        for (lib, _, _), pts in curves.items():
            ax.plot(*zip(*sorted(pts)), color=colours[lib], alpha=0.15, lw=0.8)
        for lib, c in colours.items():
            pts = [(n, b[metric]) for n in doc["nfe"] if (b := best(doc, lib, n, metric))]
            if pts:
                ax.plot(*zip(*pts), color=c, lw=2.5, marker="o", label=f"best {lib}")
        pts = [(n, b[metric]) for n in doc["nfe"] if (b := best(doc, "latentdiff", n, metric, fitted=False))]
        if pts:
            ax.plot(*zip(*pts), color=colours["latentdiff"], lw=1.5, ls="--", marker=".",
                    label="best latentdiff, standard grids only")
        if metric == "sw2":
            ax.axhline(doc["floor"]["sw2"], color="k", ls="--", lw=1, label="SW2 floor")
        ax.set(xscale="log", yscale="log", xlabel="NFE (model calls)", ylabel=metric, title=metric)
        ax.set_xticks(doc["nfe"], [str(n) for n in doc["nfe"]])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.legend()
    fig.suptitle("exact-score GMM " + ", ".join(f"{k}={v}" for k, v in doc["config"].items() if k != "nfe"))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--components", type=int, default=8)
    p.add_argument("--schedule", default="linear", choices=("linear", "cosine", "scaled-linear"))
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--nfe", type=int, nargs="+", default=list(NFES))
    p.add_argument("--n-pilot", type=int, default=4000, help="pilot batch for the fitted grids (0: no fitted runs)")
    p.add_argument("--max-evals", type=int, default=300, help="Nelder-Mead pilot runs per start grid")
    p.add_argument("--fit-samplers", nargs="*", default=list(FIT_SAMPLERS), help="samplers whose grid is fitted")
    p.add_argument("--json")
    p.add_argument("--png")
    args = p.parse_args()
    doc = run_all(args)
    print_tables(doc)
    print(f"\n{len(doc['runs'])} runs, {len(doc['skipped'])} skipped")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    if args.png:
        plot(doc, args.png)


if __name__ == "__main__":
    main()
