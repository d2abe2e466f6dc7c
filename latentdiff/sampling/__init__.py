"""Stateless samplers ``sample_<name>(denoise, x, sigmas, *, cond, generator, callback) -> x`` and their registry."""

from __future__ import annotations

import functools

import torch

from latentdiff.sampling.ddim import sample_ddim, sample_dpmpp_2m
from latentdiff.sampling.ddpm import sample_ddpm, sample_ddpm_literal
from latentdiff.sampling.guidance import CFGDenoiser

SAMPLERS = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "ddim_eta1": functools.partial(sample_ddim, eta=1.0),
    "dpmpp_2m": sample_dpmpp_2m,
}


def get_sampler(name: str):
    """The sampler function registered as ``name``; unknown names list the valid ones."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]


def prior_noise(shape, sigma_max: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x_T for a VP model in the VE view: N(0, (1 + sigma_max^2) I). Drawn on the CPU (DESIGN.md: seeds)."""
    return torch.randn(shape, generator=generator) * (1 + sigma_max**2) ** 0.5


__all__ = ["SAMPLERS", "get_sampler", "prior_noise", "CFGDenoiser", "sample_ddpm", "sample_ddpm_literal",
           "sample_ddim", "sample_dpmpp_2m"]
