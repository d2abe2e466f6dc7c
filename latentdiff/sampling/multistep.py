"""Multistep samplers: DPM-Solver++(2M) and (3M), SDE-DPM-Solver++(2M), UniPC (bh2, any order), and linear multistep (LMS).

The exponential integrators work in lambda = -log sigma with the data prediction m(lambda) = D(x, sigma).
On a step sigma -> sigma_next, h = log(sigma / sigma_next) > 0, the PF-ODE solution is exactly
(Lu et al. 2022b, "DPM-Solver++", eq. 8 in the VE view, alpha = 1)

    x_next = e^{-h} x + (1 - e^{-h}) m + g_1(h) m' + g_2(h) m'' + ...,
    g_k(h) = e^{-h} int_0^h e^u u^k / k! du:   g_1 = h + expm1(-h),  g_2 = h^2/2 - h - expm1(-h),

with m^(k) the lambda-derivatives at the current point, estimated from earlier model outputs (no
extra model calls). A multistep method of order p needs p model outputs of history, so each sampler
raises ValueError for fewer than p steps. One model call per step.

Final step. m is extrapolated in lambda, and lambda = inf at sigma = 0, so every sampler here ends
with the x0 jump: the output is D(x, sigmas[-2]) at the last nonzero sigma, the same final
handling as the reference ODE solution in latentdiff/eval/gmm.py.

Order rule on coarse grids (``step_order``). A multistep correction extrapolates m as a polynomial
through earlier outputs; over a long step the polynomial leaves the range where it describes m (m
bends where sigma crosses the data's scales) and the correction adds error instead of removing it.
On the exact-score mixture at 3-10 steps, full order made ODE-RMSE up to 13x DDIM's (3M on
``leading``: the last interval 0.72 -> sigma_min = 0.01 is h = 4.3 after steps of h ~ 1). So the
step sigma_i -> sigma_{i+1} > 0 uses order

    k_i = min(p, i + 1, n_left),  and k_i = 1 if h_i > H_MAX = 1.5 (sigma falls more than e^1.5 = 4.5-fold),

with n_left the steps left down to the last nonzero sigma (1 for the step into it): the last step
before the x0 jump is first order, the one before at most second. This is the "lower order at the
final steps" of Lu et al. 2022b (DPM-Solver++, section 3.3/Appendix, used there for < 15 steps) and
of diffusers' ``lower_order_final`` (also Zhao et al. 2023, UniPC); there m is nearly constant in
lambda (m -> x0 as sigma -> 0) so first order costs nothing on fine grids. H_MAX was measured
(benchmarks/sampler_stability.py): with it no multistep sampler exceeds DDIM's ODE-RMSE by more
than 4% on any spacing at 3-10 steps (before: up to 13x). On grids of 15+ steps on the standard
spacings the only steps longer than H_MAX are the first (first order anyway) and the last.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from latentdiff.sampling.ode import check_grid, denoise_step, randn_like


H_MAX = 1.5  # longest step (in lambda) that keeps a multistep correction; see the module docstring


def step_order(sigmas: torch.Tensor, i: int, order: int, history: int) -> int:
    """Order of the multistep step sigmas[i] -> sigmas[i+1] > 0 (the rule in the module docstring):
    min(order, history + 1, steps left to the last nonzero sigma), or 1 if that step is longer than H_MAX."""
    if float(torch.log(sigmas[i] / sigmas[i + 1])) > H_MAX:
        return 1
    return max(1, min(order, history + 1, len(sigmas) - 2 - i))


def phi(k: int, h: float) -> float:
    """g_k(h) = e^{-h} int_0^h e^u u^k / k! du, by g_0 = 1 - e^{-h}, g_k = h^k / k! - g_{k-1} (integration by parts)."""
    g = float(-np.expm1(-h))
    for j in range(1, k + 1):
        g = h**j / math.factorial(j) - g
    return g


@torch.no_grad()
def sample_dpmpp_2m(denoise, x: torch.Tensor, sigmas: torch.Tensor, *, cond=None, generator=None,
                    callback=None) -> torch.Tensor:
    """DPM-Solver++(2M), multistep second order in lambda = -log sigma; the last step to sigma = 0 is x0.

    With h = lambda_next - lambda and r = h_prev / h, the data prediction is extrapolated
    as D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1} and x_next = (sigma_next/sigma) x - expm1(-h) D;
    first order (D = x0_i) where ``step_order`` says so (final and long steps).
    """
    check_grid(sigmas, 1, "dpmpp_2m")
    x0_prev, h_prev = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise_step(denoise, x, sigmas, i, cond, callback)
        if sigma_next == 0:
            x = x0
            break
        h = torch.log(sigma / sigma_next)
        d = x0
        if x0_prev is not None and step_order(sigmas, i, 2, 1) == 2:
            r = h_prev / h
            d = (1 + 1 / (2 * r)).to(x.dtype) * x0 - (1 / (2 * r)).to(x.dtype) * x0_prev
        x = (sigma_next / sigma).to(x.dtype) * x - torch.expm1(-h).to(x.dtype) * d
        x0_prev, h_prev = x0, h
    return x


@torch.no_grad()
def sample_dpmpp_3m(denoise, x: torch.Tensor, sigmas: torch.Tensor, *, cond=None, generator=None,
                    callback=None) -> torch.Tensor:
    """DPM-Solver++(3M): multistep third order in lambda (Lu et al. 2022b, section 4 / Appendix, data prediction).

    With the previous steps h1, h2 and outputs m0 (now), m1, m2, the divided differences
    f1 = (m0 - m1)/h1, f1b = (m1 - m2)/h2, f2 = (f1 - f1b)/(h1 + h2) give m' = f1 + h1 f2 and
    m'' = 2 f2 (Newton interpolation through three points). Orders 1, 2, 3 in the first three steps,
    lowered by ``step_order`` on the final and long steps.
    x (B, ...) at sigmas[0] -> sample (B, ...). Needs >= 3 steps; NFE = steps.
    """
    check_grid(sigmas, 3, "dpmpp_3m")
    hist: list[tuple[torch.Tensor, float]] = []  # (m, h of the step that led to m's point), newest first
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        m0 = denoise_step(denoise, x, sigmas, i, cond, callback)
        if sigma_next == 0:
            return m0
        h = float(torch.log(sigma / sigma_next))
        k = step_order(sigmas, i, 3, len(hist))
        x_next = float(np.exp(-h)) * x - float(np.expm1(-h)) * m0
        if k >= 2:
            (m1, h1) = hist[0]
            f1 = (m0 - m1) / h1
            if k == 3:
                (m2, h2) = hist[1]
                f2 = (f1 - (m1 - m2) / h2) / (h1 + h2)
                x_next = x_next + phi(1, h) * (f1 + h1 * f2) + phi(2, h) * 2 * f2
            else:
                x_next = x_next + phi(1, h) * f1
        hist = [(m0, h)] + hist[:1]
        x = x_next
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(denoise, x: torch.Tensor, sigmas: torch.Tensor, *, cond=None, generator=None,
                        callback=None) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, section 5, eta = 1): second-order multistep for the reverse SDE.

    x_next = e^{-2h} x + (1 - e^{-2h}) m0 + c1(h) m' + sigma_next sqrt(1 - e^{-2h}) z,
    c1 = int_0^h 2 e^{-2(h-u)} u du = h + expm1(-2h)/2, m' = (m0 - m1)/h1 (dropped where ``step_order``
    lowers the order). The first-order part is DDPM's posterior step. x (B, ...) -> sample (B, ...).
    Needs >= 2 steps; NFE = steps.
    """
    check_grid(sigmas, 2, "dpmpp_2m_sde")
    m1, h1 = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        m0 = denoise_step(denoise, x, sigmas, i, cond, callback)
        if sigma_next == 0:
            return m0
        h = float(torch.log(sigma / sigma_next))
        x = float(np.exp(-2 * h)) * x - float(np.expm1(-2 * h)) * m0
        if m1 is not None and step_order(sigmas, i, 2, 1) == 2:
            x = x + (h + float(np.expm1(-2 * h)) / 2) * (m0 - m1) / h1
        x = x + float(sigma_next) * float(np.sqrt(-np.expm1(-2 * h))) * randn_like(x, generator)
        m1, h1 = m0, h
    return x


@torch.no_grad()
def sample_unipc(denoise, x: torch.Tensor, sigmas: torch.Tensor, *, cond=None, generator=None,
                 callback=None, order: int = 2) -> torch.Tensor:
    """UniPC-p with B(h) = 1 - e^{-h} ("bh2"; Zhao et al. 2023, Algorithms 1-2, data prediction).

    Residual form: x_next = e^{-h} x + (1 - e^{-h}) m0 + B(h) sum_j a_j (m(r_j) - m0) / r_j,
    r_j = (lambda_j - lambda)/h, with the order conditions sum_j a_j r_j^{k-1} = k! g_k(h) / (h^k B(h)),
    k = 1..#points (g_k as in ``phi``). UniP-p (predictor) uses the p - 1 previous outputs (r < 0):
    for p = 2 with a = 1/2, the leading term of its condition (the paper's choice, where B matters),
    for p > 2 solving the conditions exactly. UniC-p (corrector) adds the fresh output at the
    predicted point (r = 1) and re-does the last step with the p x p system: order p + 1 at no extra
    model call; the fresh output is kept as history. Orders ramp up over the first steps and are
    lowered by ``step_order`` on the final and long steps (the step's UniC uses the same history as
    its UniP, as in Zhao et al.'s Algorithm 2). The corrector at the last nonzero sigma is skipped:
    its x would not be used by the x0 jump.
    x (B, ...) -> sample (B, ...). Needs >= order steps; NFE = steps.
    """
    check_grid(sigmas, order, f"unipc_bh{order}")
    hist: list[tuple[torch.Tensor, float]] = []  # (m, lambda) of earlier points, newest first
    step = None  # (x, m0, lambda, h, k) of the last predictor step, for the corrector
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        m_new = denoise_step(denoise, x, sigmas, i, cond, callback)
        lam = -float(torch.log(sigma))
        if sigma_next == 0:
            return m_new
        if step is not None:  # UniC: redo the last step with the fresh output at r = 1
            x_c, m0, lam0, h, k = step
            pts = [((m - m0), (l - lam0) / h) for m, l in hist[1: k]] + [(m_new - m0, 1.0)]
            x = _unipc_base(x_c, m0, h) + _unipc_residual(pts, h)
        hist = [(m_new, lam)] + hist[: order]
        h = float(torch.log(sigma / sigma_next))
        k = step_order(sigmas, i, order, len(hist) - 1)
        pts = [((m - m_new), (l - lam) / h) for m, l in hist[1: k]]
        x_next = _unipc_base(x, m_new, h)
        if pts:  # UniP
            x_next = x_next + (_unipc_residual(pts, h, half=True) if order == 2 else _unipc_residual(pts, h))
        step = (x, m_new, lam, h, k)
        x = x_next
    return x


def _unipc_base(x: torch.Tensor, m0: torch.Tensor, h: float) -> torch.Tensor:
    """The first-order (DDIM) part e^{-h} x + (1 - e^{-h}) m0."""
    return float(np.exp(-h)) * x - float(np.expm1(-h)) * m0


def _unipc_residual(pts: list, h: float, half: bool = False) -> torch.Tensor:
    """B(h) sum_j a_j D_j / r_j for points [(D_j = m_j - m0, r_j)], a from the order conditions (a = 1/2 if half)."""
    B = float(-np.expm1(-h))
    r = np.array([rj for _, rj in pts])
    if half:
        a = np.full(1, 0.5)
    else:
        K = len(pts)
        R = np.vander(r, K, increasing=True).T  # R[k, j] = r_j^k
        b = np.array([math.factorial(k + 1) * phi(k + 1, h) / (h ** (k + 1) * B) for k in range(K)])
        a = np.linalg.solve(R, b)
    return B * sum(float(a_j) * D / float(r_j) for a_j, (D, r_j) in zip(a, pts))


def lms_coefficients(nodes: list[float], a: float, b: float) -> list[float]:
    """Integrals from a to b of the Lagrange basis polynomials on ``nodes`` (closed form via numpy.polynomial)."""
    P = np.polynomial.polynomial
    coeffs = []
    for j, s_j in enumerate(nodes):
        others = [s for k, s in enumerate(nodes) if k != j]
        basis = P.polyfromroots(others) / np.prod([s_j - s for s in others]) if others else np.array([1.0])
        antider = P.polyint(basis)
        coeffs.append(float(P.polyval(b, antider) - P.polyval(a, antider)))
    return coeffs


@torch.no_grad()
def sample_lms(denoise, x: torch.Tensor, sigmas: torch.Tensor, *, cond=None, generator=None,
               callback=None, order: int = 4) -> torch.Tensor:
    """Linear multistep (Adams-Bashforth on the nonuniform sigma grid) for dx/dsigma = (x - D)/sigma.

    x_{i+1} = x_i + sum_j c_j d_{i-j}, c_j = int_{sigma_i}^{sigma_{i+1}} L_j(s) ds with L_j the Lagrange
    basis on the last k = ``step_order`` (at most min(i+1, order)) nodes (Karras et al. 2022, section 3
    mentions it; k-diffusion's ``lms``). x (B, ...) -> sample (B, ...). Needs >= order steps; NFE = steps;
    ends with the x0 jump.
    """
    check_grid(sigmas, order, "lms")
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise_step(denoise, x, sigmas, i, cond, callback)
        if sigma_next == 0:
            return x0
        ds = [(x - x0) / sigma.to(x.dtype)] + ds[: order - 1]
        k = step_order(sigmas, i, order, len(ds) - 1)
        nodes = [float(s) for s in sigmas[i - k + 1: i + 1].flip(0)]
        for c, d in zip(lms_coefficients(nodes, float(sigma), float(sigma_next)), ds[:k]):
            x = x + c * d
    return x
