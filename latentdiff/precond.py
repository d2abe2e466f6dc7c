"""Parameterisations wrapped as one denoiser ``D(x, sigma, cond) -> x0_hat`` (DESIGN.md section 3).

``x`` is in the variance-exploding view, ``x = x0 + sigma * n``. Following
Karras et al. 2022 (EDM, Table 1), every parameterisation is

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, t(sigma), cond)

with F the backbone. For a VP model c_in = 1/sqrt(1 + sigma^2) (the backbone
sees x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps) and

    eps (Ho et al. 2020):        c_skip = 1,               c_out = -sigma
    v   (Salimans & Ho 2022):    c_skip = 1/(1 + sigma^2), c_out = -sigma/sqrt(1 + sigma^2)
    x0:                          c_skip = 0,               c_out = 1

The backbone never sees the parameterisation; it only gets the timestep
``t(sigma)`` of its discrete schedule.

Rectified flow (Liu et al. 2023; flow matching, Lipman et al. 2023; SD3, Esser et al. 2024) is one
more parameterisation, ``flow``: its straight path x_t = (1 - t) x0 + t eps is the VE point
x = x0 + sigma eps with sigma = t / (1 - t), scaled by 1 - t = 1 / (1 + sigma). The backbone sees
c_in x = x_t and the time 1000 t (``schedules.FlowSchedule``) and predicts the velocity
v = dx_t/dt = eps - x0, so x0 = x_t - t v:

    flow:                        c_skip = 1/(1 + sigma),   c_out = -sigma/(1 + sigma), c_in = 1/(1 + sigma)

Every sampler integrates the VE ODE in sigma, so every sampler runs a flow model; Euler in sigma
is exactly Euler in t on the flow ODE (both are DDIM's step; tests/test_flow.py).
"""

from __future__ import annotations

import torch
from torch import nn

from latentdiff.schedules import DiscreteSchedule

PARAMETERISATIONS = ("eps", "v", "x0", "flow")


def vp_coefficients(sigma: torch.Tensor, parameterisation: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in) for a VP model, each shaped like ``sigma``."""
    c_in = (1 + sigma**2).rsqrt()
    if parameterisation == "eps":
        return torch.ones_like(sigma), -sigma, c_in
    if parameterisation == "v":
        return c_in**2, -sigma * c_in, c_in
    if parameterisation == "x0":
        return torch.zeros_like(sigma), torch.ones_like(sigma), c_in
    raise ValueError(f"unknown parameterisation {parameterisation!r}; valid: {', '.join(PARAMETERISATIONS)}")


def coefficients(sigma: torch.Tensor, parameterisation: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in) of any parameterisation (the VP ones, or ``flow``), shaped like ``sigma``."""
    if parameterisation == "flow":
        c_in = 1 / (1 + sigma)
        return c_in, -sigma * c_in, c_in
    return vp_coefficients(sigma, parameterisation)


def training_target(parameterisation: str, x0: torch.Tensor, eps: torch.Tensor,
                    alpha_bar: torch.Tensor) -> torch.Tensor:
    """What the backbone regresses for x_t = sqrt(a) x0 + sqrt(1-a) eps (alpha_bar broadcastable to x0),
    or for ``flow`` the velocity eps - x0 of x_t = (1 - t) x0 + t eps (alpha_bar unused)."""
    if parameterisation == "eps":
        return eps
    if parameterisation == "v":
        return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0
    if parameterisation == "x0":
        return x0
    if parameterisation == "flow":
        return eps - x0
    raise ValueError(f"unknown parameterisation {parameterisation!r}; valid: {', '.join(PARAMETERISATIONS)}")


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


class Denoiser(nn.Module):
    """Wraps a discrete-time VP backbone ``net(x_t, t, cond) -> F`` (or a flow one, with a ``FlowSchedule``)
    as ``D(x, sigma, cond) -> x0_hat``.

    Args:
        net: backbone; returns (B, C, H, W), or (B, 2C, H, W) when ``learned_variance``.
        schedule: the backbone's training schedule (maps sigma to its timestep).
        parameterisation: ``eps``, ``v``, ``x0`` or ``flow``.
        learned_variance: the backbone's second C channels are the Improved-DDPM
            variance interpolation v in [-1, 1] (Nichol & Dhariwal 2021, eq. 15).
    """

    def __init__(self, net: nn.Module, schedule: DiscreteSchedule, parameterisation: str = "eps",
                 learned_variance: bool = False):
        super().__init__()
        coefficients(torch.ones(1), parameterisation)  # validates the name
        self.net, self.schedule = net, schedule
        self.parameterisation, self.learned_variance = parameterisation, learned_variance

    @property
    def sigma_min(self) -> float:
        return self.schedule.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.schedule.sigma_max

    def predict(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict | None = None):
        """x (B,C,H,W), sigma (B,) or scalar -> (x0_hat, v_frac or None), v_frac (B,C,H,W) in [0,1]."""
        # coefficients and timesteps in float64 (B values only), then cast to x's dtype
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float64)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        c_skip, c_out, c_in = (_expand(c, x) for c in coefficients(sigma, self.parameterisation))
        t = self.schedule.sigma_to_t(sigma).to(torch.float32)
        out = self.net(x * c_in, t, **(cond or {}))
        v_frac = None
        if self.learned_variance:
            out, v = out.chunk(2, dim=1)
            v_frac = (v.float() + 1) / 2
        return c_skip * x + c_out * out.to(x.dtype), v_frac

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict | None = None) -> torch.Tensor:
        """x (B,C,H,W) in the VE view, sigma (B,) or scalar -> x0_hat (B,C,H,W)."""
        return self.predict(x, sigma, cond)[0]
