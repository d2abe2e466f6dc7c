"""Noise schedules: betas, alpha_bar, sigma, logSNR, and sigma grids for sampling.

Conventions (DESIGN.md section 3). A discrete variance-preserving (VP) schedule
has T steps indexed ``i = 0 .. T-1`` (Ho et al.'s ``t = i + 1``), with

    alpha_bar_i = prod_{j <= i} (1 - beta_j),
    sigma_i     = sqrt((1 - alpha_bar_i) / alpha_bar_i),     (variance-exploding view)
    logSNR_i    = log(alpha_bar_i / (1 - alpha_bar_i)) = -2 log sigma_i,

so that ``x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps`` (VP) equals
``(x0 + sigma eps) * sqrt(alpha_bar)`` and ``alpha_bar = 1 / (1 + sigma^2)``.

Sampling grids are descending sigma tensors ending in 0 (k-diffusion style).
"""

from __future__ import annotations

import math
import numbers

import torch

SCHEDULES = ("linear", "cosine", "scaled_linear")
SPACINGS = ("leading", "trailing", "linspace", "karras", "logsnr", "balanced")


# ---------------------------------------------------------------- betas


def linear_betas(T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> torch.Tensor:
    """DDPM (Ho et al. 2020, section 4): betas linear from 1e-4 to 0.02. Shape (T,), float64."""
    return torch.linspace(beta_1, beta_T, T, dtype=torch.float64)


def scaled_linear_betas(T: int = 1000, beta_1: float = 0.00085, beta_T: float = 0.012) -> torch.Tensor:
    """Stable Diffusion: betas linear in sqrt(beta). Shape (T,), float64."""
    return torch.linspace(beta_1**0.5, beta_T**0.5, T, dtype=torch.float64) ** 2


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) pi/2), betas clipped at 0.999."""
    def f(t: float) -> float:
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float64)


def cosine_alpha_bar(u: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """The continuous cosine schedule (Nichol & Dhariwal 2021, eq. 17) at times u in [0, 1]:
    alpha_bar(u) = f(u) / f(0), f(u) = cos^2(((u + s)/(1 + s)) pi/2); exactly 1 at u = 0 and 0 at u = 1."""
    f = lambda v: torch.cos((v + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return (f(u.double()) / f(torch.zeros((), dtype=torch.float64))).clamp(0, 1).to(u.dtype)


def make_betas(name: str, T: int = 1000) -> torch.Tensor:
    """Betas by schedule name (``linear``, ``cosine``, ``scaled_linear``). Shape (T,), float64."""
    table = {"linear": linear_betas, "cosine": cosine_betas, "scaled_linear": scaled_linear_betas}
    if name not in table:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    return table[name](T)


# ---------------------------------------------------------------- conversions


def alpha_bar_from_betas(betas: torch.Tensor) -> torch.Tensor:
    return torch.cumprod(1.0 - betas, dim=0)


def sigma_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def alpha_bar_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + sigma**2)


def logsnr_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    return -2.0 * torch.log(sigma)


def sigma_from_logsnr(logsnr: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * logsnr)


class DiscreteSchedule:
    """A discrete VP schedule of T steps with sigma <-> timestep conversion.

    ``sigma_to_t`` interpolates log-sigma linearly between the table entries, so
    any sigma in [sigma_min, sigma_max] maps to a continuous timestep in [0, T-1],
    and a table sigma maps back to its exact integer index.
    """

    def __init__(self, name: str = "linear", T: int = 1000, betas: torch.Tensor | None = None):
        self.name, self.T = name, T
        self.betas = make_betas(name, T) if betas is None else betas.to(torch.float64)
        if len(self.betas) != T:
            raise ValueError(f"{len(self.betas)} betas given for T = {T}")
        self.alpha_bar = alpha_bar_from_betas(self.betas)
        self.sigmas = sigma_from_alpha_bar(self.alpha_bar)  # ascending in i
        self.log_sigmas = self.sigmas.log()
        self._tables: dict[torch.device, torch.Tensor] = {}

    def log_sigmas_on(self, device: torch.device) -> torch.Tensor:
        """``log_sigmas`` on ``device``, copied once (a copy every sampler step would sync the GPU)."""
        if device not in self._tables:
            self._tables[device] = self.log_sigmas.to(device)
        return self._tables[device]

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """(B,) sigma -> (B,) continuous timestep, same dtype as sigma."""
        log_sigma = sigma.to(torch.float64).clamp(self.sigma_min, self.sigma_max).log()
        table = self.log_sigmas_on(sigma.device)
        hi = torch.searchsorted(table, log_sigma).clamp(1, self.T - 1)
        lo = hi - 1
        w = (log_sigma - table[lo]) / (table[hi] - table[lo])
        return (lo + w.clamp(0, 1)).to(sigma.dtype)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) continuous timestep -> (B,) sigma (log-linear interpolation)."""
        t = t.to(torch.float64).clamp(0, self.T - 1)
        lo = t.floor().long()
        hi = (lo + 1).clamp(max=self.T - 1)
        w = t - lo
        table = self.log_sigmas_on(t.device)
        return ((1 - w) * table[lo] + w * table[hi]).exp()


class FlowSchedule(DiscreteSchedule):
    """The rectified-flow path x_t = (1 - t) x0 + t eps (``precond``'s ``flow``) as a schedule: in the VE
    view sigma = t / (1 - t) (its VP twin has alpha_bar = 1 / (1 + sigma^2)). The table has T entries
    at t_i = (i + 1) / (T + 1), so sigma runs from 1/T to T and the table spacings (``trailing``, ...)
    are uniform in t, as SD3's sampler is (Esser et al. 2024, section 3.1). The backbone's time is
    continuous, T t (SD3's timestep = 1000 t): ``sigma_to_t`` and ``t_to_sigma`` are exact, not
    table lookups."""

    def __init__(self, T: int = 1000):
        t = torch.arange(1, T + 1, dtype=torch.float64) / (T + 1)
        alpha_bar = 1 / (1 + (t / (1 - t)) ** 2)
        betas = 1 - alpha_bar / torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        super().__init__("flow", T, betas=betas)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.to(torch.float64).clamp(0, self.sigma_max)
        return (self.T * s / (1 + s)).to(sigma.dtype)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        u = t.to(torch.float64).clamp(0, self.T - 1) / self.T
        return u / (1 - u)


# ---------------------------------------------------------------- sampling grids


def timesteps(T: int, n: int, spacing: str = "trailing") -> torch.Tensor:
    """n integer timesteps in [0, T-1], descending, as diffusers spaces them.

    ``leading`` (DDIM paper, diffusers' DDIMScheduler default): (0, k, 2k, ...) with k = T // n;
    ``trailing`` (Lin et al. 2024, "Common diffusion noise schedules are flawed"): starts at T-1;
    ``linspace``: round(linspace(0, T-1, n)).
    """
    if n < 1 or n > T:
        raise ValueError(f"number of steps must be in [1, {T}], got {n}")
    if spacing == "leading":
        ts = torch.arange(n, dtype=torch.float64) * (T // n)
    elif spacing == "trailing":
        ts = torch.round(torch.arange(T, 0, -T / n, dtype=torch.float64)) - 1
        return ts.long()
    elif spacing == "linspace":
        ts = torch.linspace(0, T - 1, n, dtype=torch.float64).round()
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; valid: leading, trailing, linspace")
    return ts.long().flip(0)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: n sigmas from sigma_max down to sigma_min, then 0. Shape (n+1,)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    inv = sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    return torch.cat([inv**rho, torch.zeros(1, dtype=torch.float64)])


def logsnr_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """n sigmas uniform in logSNR = -2 log sigma (Lu et al. 2022, DPM-Solver's "logSNR" steps), then 0. Shape (n+1,)."""
    log_sigma = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64)
    return torch.cat([log_sigma.exp(), torch.zeros(1, dtype=torch.float64)])


def balanced_sigmas(n: int, sigma_min: float, sigma_max: float, sigma_data: float = 0.5,
                    order: int = 2) -> torch.Tensor:
    """n sigmas that equidistribute the global error of an order-p exponential integrator, then 0. Shape (n+1,).

    Derivation (for Gaussian data of std sigma_data, which sets where the data prediction bends).
    With lambda = -log sigma and q = sigma^2/sigma_data^2, the PF-ODE's data prediction along a
    trajectory is m(lambda) = c sigma_data (1 + q)^{-1/2}, so m''(lambda) = c sigma_data q (q - 2)(1 + q)^{-5/2},
    and an error in x at sigma reaches x0 scaled by dx0/dx = (1 + q)^{-1/2}. A step of size h
    therefore contributes h^{p+1} w(lambda) to the final error with w ~ q / (1 + q)^2
    = 1 / (2 + 2 cosh(2 (lambda - lambda_d))), lambda_d = -log sigma_data (dropping the isolated zero at q = 2).
    Minimising int h(lambda)^p w dlambda at a fixed number of steps int dlambda / h = n gives
    h ~ w^{-1/(p+1)}: the step density is rho(lambda) ~ cosh(lambda - lambda_d)^{-2/(p+1)}.
    The grid puts the n sigmas at equal quantiles of rho on [lambda(sigma_max), lambda(sigma_min)];
    steps are densest at sigma = sigma_data and thin out geometrically both ways, unlike logSNR
    (uniform) or Karras (densest at small sigma). Measured on the exact-score GMM (D=16, K=8, NFE 5-20)
    it does not beat ``logsnr`` (which was best there): mixture data bend at several scales, not one.
    """
    if n == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64)
    lam = torch.linspace(-math.log(sigma_max), -math.log(sigma_min), 4097, dtype=torch.float64)
    density = torch.cosh(lam + math.log(sigma_data)) ** (-2.0 / (order + 1))
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum((density[1:] + density[:-1]) / 2, 0)])
    quantiles = torch.linspace(0, 1, n, dtype=torch.float64) * cdf[-1]
    idx = torch.searchsorted(cdf, quantiles).clamp(1, len(cdf) - 1)
    w = (quantiles - cdf[idx - 1]) / (cdf[idx] - cdf[idx - 1])
    lam_q = lam[idx - 1] + w * (lam[idx] - lam[idx - 1])
    sigmas = torch.exp(-lam_q)
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


MAX_CONTINUOUS_STEPS = 10_000  # far past any solver's convergence (tests use up to 1024)


def sigma_grid(schedule: DiscreteSchedule, n: int, spacing: str = "trailing", rho: float = 7.0) -> torch.Tensor:
    """Descending sigmas for an n-step sampler, ending in 0. Shape (n+1,), float64.

    ``leading``/``trailing``/``linspace`` pick table sigmas at integer timesteps; ``karras`` (rho),
    ``logsnr`` and ``balanced`` (sigma_data = 0.5) are continuous in [sigma_min, sigma_max].
    Raises ValueError for an unknown spacing (listing the valid ones) or n not an integer in [1, T]
    (table spacings) or [1, MAX_CONTINUOUS_STEPS] (the continuous ones: a typo's million steps is refused).
    """
    if spacing not in SPACINGS and spacing != "fitted":
        raise ValueError(f"unknown spacing {spacing!r}; valid: {', '.join(SPACINGS)}, or 'fitted' to a model")
    limit = schedule.T if spacing in ("leading", "trailing", "linspace") else MAX_CONTINUOUS_STEPS
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= limit:
        raise ValueError(f"number of sampling steps for the {spacing} spacing must be an integer in [1, {limit}], "
                         f"got {n!r}")
    n = int(n)
    if spacing == "karras":
        return karras_sigmas(n, schedule.sigma_min, schedule.sigma_max, rho)
    if spacing == "logsnr":
        return logsnr_sigmas(n, schedule.sigma_min, schedule.sigma_max)
    if spacing == "balanced":
        return balanced_sigmas(n, schedule.sigma_min, schedule.sigma_max)
    if spacing == "fitted":
        raise ValueError("the 'fitted' grid depends on the model: fit it with latentdiff.sampling.fitted.fit_sigmas "
                         "(or generate(..., spacing='fitted'))")
    ts = timesteps(schedule.T, n, spacing)
    return torch.cat([schedule.sigmas[ts], torch.zeros(1, dtype=torch.float64)])
