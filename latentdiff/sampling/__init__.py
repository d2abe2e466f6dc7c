"""Stateless samplers ``sample_<name>(denoise, x, sigmas, *, cond, generator, callback, **opts) -> x`` and their registry.

Every sampler takes a descending float64 grid ``sigmas`` ending in 0 (``schedules.sigma_grid`` with
any spacing), x (B, ...) at sigmas[0], and returns the sample at sigma = 0. Final-step handling:
all of them end with the data prediction at the last nonzero sigma (the "x0 jump"; for ddpm/ddim
the posterior step to 0 is that same jump). A sampler given fewer steps than it needs (its
multistep order; 1 for the others) raises ValueError naming itself and the step count.

Coarse grids. Every sampler here stays at or near DDIM's accuracy on every grid it accepts
(tests/test_sampler_stability.py, benchmarks/sampler_stability.py): the multistep samplers lower
their order on the final steps and on long steps (``multistep.step_order``), and heun takes an
Euler step where its correction would be unstable (``ode.HEUN_MAX_RATIO``).
"""

from __future__ import annotations

import functools
import re

import torch

from latentdiff.sampling.ddim import sample_ddim
from latentdiff.sampling.ddpm import sample_ddpm, sample_ddpm_literal
from latentdiff.sampling.guidance import (CFGDenoiser, ControlWindow, ThresholdedDenoiser, control_sigma_window,
                                          dynamic_threshold)
from latentdiff.sampling.multistep import (sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_3m, sample_lms,
                                           sample_unipc)
from latentdiff.sampling.ode import sample_consistency, sample_euler, sample_euler_a, sample_heun
from latentdiff.sampling.score import sample_langevin, sample_pc

SAMPLERS = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "ddim_eta1": functools.partial(sample_ddim, eta=1.0),
    "dpmpp_2m": sample_dpmpp_2m,
    "euler": sample_euler,
    "euler_a": sample_euler_a,
    "heun": sample_heun,
    "dpmpp_3m": sample_dpmpp_3m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "unipc_bh2": sample_unipc,
    "unipc_bh3": functools.partial(sample_unipc, order=3),
    "lms": sample_lms,
    "langevin": sample_langevin,
    "pc": sample_pc,
    "consistency": sample_consistency,
}

# Model calls for a grid of n steps (n + 1 sigmas), with the samplers' default options; for heun an
# upper bound (a step longer than HEUN_MAX_RATIO is Euler, one call; fine grids reach it exactly).
NFE_OF_STEPS = {
    "heun": lambda n, **o: 2 * n - 1,
    "langevin": lambda n, n_steps_each=100, **o: n * n_steps_each + 1,
    "pc": lambda n, n_corrector=1, **o: n + n_corrector * (n - 1),
}


# One line per spacing for `latentdiff samplers` (the grids are schedules.sigma_grid's; fitted is sampling/fitted.py).
SPACING_HELP = {
    "leading": "table sigmas at timesteps 0, k, 2k, ... (k = T // n; DDIM paper, diffusers' DDIMScheduler default)",
    "trailing": "table sigmas at timesteps from T-1 down in equal strides (Lin et al. 2024)",
    "linspace": "table sigmas at round(linspace(0, T-1, n))",
    "karras": "Karras et al. 2022, eq. 5 (rho = 7): dense at small sigma",
    "logsnr": "uniform in logSNR = -2 log sigma (DPM-Solver's steps)",
    "balanced": "equidistributes an order-2 integrator's error for data of std 0.5 (dense near sigma = 0.5)",
    "fitted": "fitted to this model and sampler on a pilot batch first (minutes; sampling/fitted.py)",
}


def _first_sentence(doc: str | None) -> str:
    """The docstring's first sentence (its first paragraph, up to a '. ' that does not end 'al.' or 'eq.')."""
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    match = re.search(r"(?<!al)(?<!eq)\.(\s|$)", paragraph)
    return paragraph[:match.start() + 1] if match else paragraph


def describe_samplers() -> list[tuple[str, str]]:
    """(name, first sentence of its docstring, plus the options of a preset variant) for every sampler."""
    rows = []
    for name, fn in SAMPLERS.items():
        base = fn.func if isinstance(fn, functools.partial) else fn
        options = ", ".join(f"{k}={v}" for k, v in getattr(fn, "keywords", {}).items())
        rows.append((name, _first_sentence(base.__doc__) + (f" [{options}]" if options else "")))
    return rows


def describe_spacings() -> list[tuple[str, str]]:
    """(name, one line) for every sigma spacing, ``fitted`` included."""
    from latentdiff.schedules import SPACINGS

    return [(name, SPACING_HELP.get(name, "")) for name in (*SPACINGS, "fitted")]


def get_sampler(name: str):
    """The sampler function registered as ``name``; unknown names list the valid ones."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]


def steps_for_nfe(name: str, nfe: int, **opts) -> int:
    """The largest step count whose model-call count (``NFE_OF_STEPS``, default one per step) is <= nfe."""
    get_sampler(name)
    cost = NFE_OF_STEPS.get(name, lambda n, **o: n)
    n = 1
    while cost(n + 1, **opts) <= nfe:
        n += 1
    return n


def prior_noise(shape, sigma_max: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x_T for a VP model in the VE view: N(0, (1 + sigma_max^2) I). Drawn on the CPU (DESIGN.md: seeds)."""
    return torch.randn(shape, generator=generator) * (1 + sigma_max**2) ** 0.5


__all__ = ["SAMPLERS", "NFE_OF_STEPS", "SPACING_HELP", "describe_samplers", "describe_spacings", "get_sampler",
           "steps_for_nfe", "prior_noise", "CFGDenoiser", "ControlWindow", "control_sigma_window",
           "ThresholdedDenoiser", "dynamic_threshold",
           "sample_ddpm", "sample_ddpm_literal", "sample_ddim", "sample_dpmpp_2m", "sample_euler", "sample_euler_a",
           "sample_heun", "sample_dpmpp_3m", "sample_dpmpp_2m_sde", "sample_unipc", "sample_lms",
           "sample_langevin", "sample_pc", "sample_consistency"]
