"""Exact log-likelihood through the probability-flow ODE (Song et al. 2021, section 4.3 and appendix D.2).

In the VE view of the denoiser contract (x = x0 + sigma n) the PF-ODE is dx/dsigma = (x - D(x, sigma))/sigma
(Karras et al. 2022, eq. 3). We integrate in t = log sigma, where it is dx/dt = g(x, t) = x - D(x, e^t), and
the instantaneous change of variables (Chen et al. 2018, theorem 1) gives

    log p_{sigma_min}(x(sigma_min)) = log p_prior(x(sigma_max)) + int_{log sigma_min}^{log sigma_max} div_x g dt,
    div_x g = dim - tr(dD/dx),

an augmented ODE for the state (x, L) with dL/dt = div_x g, L = 0 at sigma_min, solved by scipy's adaptive
RK45 (rtol, atol stated by the caller) on the flattened float64 state, one solve per batch. The prior is the
VP model's N(0, I) seen in the VE view, N(0, (1 + sigma_max^2) I) (``sampling.prior_noise``).

The divergence is exact (dim backward passes; for small dim) or the Hutchinson-Skilling estimate
eps^T (dg/dx) eps with K fixed probes per sample, Rademacher or Gaussian (Grathwohl et al. 2019, FFJORD):
each probe keeps its own L, so the K log-likelihoods per sample are i.i.d. unbiased estimates and their
spread gives the probe noise. The number is log p_{sigma_min}: the model's density at its smallest
trained noise level (D below sigma_min is extrapolation), as k-diffusion's ``log_likelihood`` reports.

Bits/dim of 8-bit images. The data in [-1, 1] are k / 127.5 - 1, k in {0..255}: bins of width 1/127.5.
Uniform dequantisation x = k / 127.5 - 1 + (u - 1/2) / 127.5, u ~ U[0, 1)^dim (Theis et al. 2016), and
Jensen give -log P(k) <= E_u[-log p(x)] - dim log(1/127.5), so
    bits/dim = (-log p(x) + dim log 127.5) / (dim log 2).
"""

from __future__ import annotations

import math

import numpy as np
import torch

PROBES = ("rademacher", "gaussian")
BIN_SCALE = 127.5  # [0, 255] -> [-1, 1] is x = k / 127.5 - 1


def make_probes(shape: tuple[int, ...], n_probes: int, kind: str = "rademacher",
                generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
    """(K, B, ...) Hutchinson probes with E[eps eps^T] = I: Rademacher (+-1) or standard Gaussian."""
    if kind == "rademacher":
        return torch.randint(0, 2, (n_probes, *shape), generator=generator).to(dtype) * 2 - 1
    if kind == "gaussian":
        return torch.randn((n_probes, *shape), generator=generator, dtype=dtype)
    raise ValueError(f"unknown probe {kind!r}; valid: {', '.join(PROBES)}")


def divergence_exact(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fn(x), div_x fn(x) = tr(d fn / dx) per sample (B,)) for fn mapping (B, ...) -> (B, ...) samplewise.

    One backward pass per coordinate (dim of them): for small dimensions only."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = fn(x).reshape(x.shape[0], -1)
        div = torch.zeros(x.shape[0], dtype=out.dtype, device=x.device)
        for j in range(out.shape[1]):
            (grad,) = torch.autograd.grad(out[:, j].sum(), x, retain_graph=j < out.shape[1] - 1)
            div = div + grad.reshape(x.shape[0], -1)[:, j]
    return out.reshape(x.shape).detach(), div.detach()


def divergence_hutchinson(fn, x: torch.Tensor, probes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fn(x), eps^T (d fn / dx) eps for each probe (K, B)): K vector-Jacobian products. probes (K, B, ...)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = fn(x)
        est = []
        for k, eps in enumerate(probes):
            (vjp,) = torch.autograd.grad(out, x, eps, retain_graph=k < len(probes) - 1)
            est.append((vjp * eps).reshape(x.shape[0], -1).sum(1))
    return out.detach(), torch.stack(est).detach()


def vp_prior_logp(x: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """log N(x; 0, (1 + sigma_max^2) I) per sample, (B,): the VP prior N(0, I) in the VE view."""
    var = 1.0 + sigma_max**2
    x = x.reshape(x.shape[0], -1).double()
    return -0.5 * (x.pow(2).sum(1) / var + x.shape[1] * math.log(2 * math.pi * var))


def ode_log_likelihood(denoise, x: torch.Tensor, *, cond: dict | None = None, sigma_min: float | None = None,
                       sigma_max: float | None = None, divergence: str = "hutchinson", n_probes: int = 1,
                       probe: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5, prior_logp=None,
                       generator: torch.Generator | None = None) -> dict:
    """log p_{sigma_min}(x) of the model's PF-ODE density, nats, for a batch x (B, ...).

    Args:
        denoise: D(x, sigma (B,), cond) -> x0_hat under the denoiser contract; must give its continuous
            sigma range as ``sigma_min`` / ``sigma_max`` attributes unless both are passed.
        x: points (B, ...) in the VE view at sigma_min (dequantised images, or GMM points); its dtype
            is the network's (float64 for exact denoisers).
        divergence: ``exact`` or ``hutchinson`` (``n_probes`` fixed ``probe`` vectors per sample).
        rtol, atol: RK45's tolerances on the whole flattened state (x and the L's).
        prior_logp: (x (B, ...), sigma_max) -> (B,); default the VP prior ``vp_prior_logp``.
    Returns: {"logp" (B,) float64 (mean over probes), "logp_probes" (K, B) (K = 1 if exact), "prior" (B,),
    "delta" (K, B) the integral of div g, "x_max" (B, ...) x at sigma_max, "nfe", "n_steps", "sigma_min",
    "sigma_max"}.
    """
    sigma_min = getattr(denoise, "sigma_min", None) if sigma_min is None else sigma_min
    sigma_max = getattr(denoise, "sigma_max", None) if sigma_max is None else sigma_max
    if sigma_min is None or sigma_max is None or not 0 < sigma_min < sigma_max < math.inf:
        raise ValueError("the probability-flow ODE needs a denoiser with a continuous noise range "
                         f"0 < sigma_min < sigma_max < inf (got sigma_min={sigma_min}, sigma_max={sigma_max})")
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"unknown divergence {divergence!r}; valid: exact, hutchinson")
    from scipy.integrate import solve_ivp

    B, shape, dtype, device = x.shape[0], x.shape, x.dtype, x.device
    dim = x[0].numel()
    K = 1 if divergence == "exact" else n_probes
    probes = None if divergence == "exact" else make_probes(tuple(shape), K, probe, generator, dtype).to(device)
    nfe = 0

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        nonlocal nfe
        nfe += 1
        xt = torch.from_numpy(y[: B * dim]).reshape(shape).to(device, dtype)
        sigma = torch.full((B,), math.exp(t), dtype=torch.float64, device=device)

        def g(z):  # dx/dt in t = log sigma
            return z - denoise(z, sigma, cond).to(dtype)

        if probes is None:
            dx, div = divergence_exact(g, xt)
            div = div[None]
        else:
            dx, div = divergence_hutchinson(g, xt, probes)
        return np.concatenate([dx.double().cpu().reshape(-1).numpy(), div.double().cpu().reshape(-1).numpy()])

    y0 = np.concatenate([x.detach().double().cpu().reshape(-1).numpy(), np.zeros(K * B)])
    sol = solve_ivp(rhs, (math.log(sigma_min), math.log(sigma_max)), y0, method="RK45", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"the likelihood ODE failed: {sol.message}")
    y = sol.y[:, -1]
    x_max = torch.from_numpy(y[: B * dim].copy()).reshape(shape)
    delta = torch.from_numpy(y[B * dim:].copy()).reshape(K, B)
    prior = (prior_logp or vp_prior_logp)(x_max, sigma_max).double().cpu()
    logp_probes = prior[None] + delta
    return {"logp": logp_probes.mean(0), "logp_probes": logp_probes, "prior": prior, "delta": delta, "x_max": x_max,
            "nfe": nfe, "n_steps": len(sol.t) - 1, "sigma_min": sigma_min, "sigma_max": sigma_max}


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """8-bit images in [-1, 1] (B, ...) -> uniformly dequantised, each value spread over its bin of width 1/127.5."""
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return x + (u - 0.5) / BIN_SCALE


def bits_per_dim(logp: torch.Tensor, dim: int, bin_scale: float | None = BIN_SCALE) -> torch.Tensor:
    """Bits/dim from log-densities (nats) of ``dim``-dimensional points (module docstring).

    ``bin_scale`` 127.5: dequantised 8-bit images in [-1, 1] (adds dim log 127.5 nats: the density of
    [0, 256) pixel values); None: continuous data (latents), the density itself per dimension."""
    nats = -logp.double() + (dim * math.log(bin_scale) if bin_scale else 0.0)
    return nats / (dim * math.log(2.0))
