"""Sampler error with no training noise: a Gaussian mixture and its exact optimal denoiser (DESIGN.md section 5).

Data x0 ~ sum_k w_k N(mu_k, diag(s_k^2)) in D dims. In the VE view x = x0 + sigma n, so
p_sigma(x | k) = N(mu_k, diag(s_k^2 + sigma^2)), and the minimum-MSE denoiser is (float64)

    D*(x, sigma) = E[x0 | x] = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)),
    r_k(x) = softmax_k(log w_k + log N(x; mu_k, diag(s_k^2 + sigma^2)))      (logsumexp-stable).

Reference. The probability-flow ODE dx/dsigma = (x - D*(x, sigma))/sigma is solved from the same
x_T at sigmas[0] down to the schedule's sigma_min with scipy's DOP853 (rtol = atol = 1e-10), in
t = log sigma (dx/dt = x - D*), vectorised over the batch; the reference sample is then
D*(x(sigma_min), sigma_min): the same x0 jump at the last nonzero sigma with which all our samplers
end (latentdiff/sampling). A grid whose last nonzero sigma is above sigma_min (e.g. ``trailing``)
is charged the difference.

Metrics: ODE-RMSE per coordinate to the reference; sliced Wasserstein-2 to fresh true samples,
with its noise floor (SW2 between two independent true sets of the same size); total variation
between the component weights and the fractions of samples whose most likely component is k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from latentdiff.schedules import DiscreteSchedule, sigma_grid


@dataclass(frozen=True)
class GMM:
    """means (K, D), stds (K, D) (equal along D for isotropic components), weights (K,); float64."""

    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0 (n, D) float64, component index (n,))."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k] * z, k

    def log_joint(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log w_k + log p_sigma(x | k) for x (B, D), sigma (B,): shape (B, K)."""
        var = self.stds[None] ** 2 + sigma.reshape(-1, 1, 1) ** 2  # (B, K, D)
        sq = ((x[:, None, :] - self.means[None]) ** 2 / var).sum(-1)
        return self.weights.log()[None] - 0.5 * (sq + var.log().sum(-1) + self.dim * math.log(2 * math.pi))

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Exact E[x0 | x0 + sigma n = x]: x (B, D), sigma (B,) or scalar -> (B, D), all float64."""
        x = x.to(torch.float64)
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0])
        r = torch.softmax(self.log_joint(x, sigma), dim=1)  # (B, K) responsibilities
        shrink = self.stds[None] ** 2 / (self.stds[None] ** 2 + sigma.reshape(-1, 1, 1) ** 2)
        post = self.means[None] + shrink * (x[:, None, :] - self.means[None])  # (B, K, D)
        return (r[..., None] * post).sum(1)

    def assign(self, x0: torch.Tensor) -> torch.Tensor:
        """Most likely component of each clean sample: x0 (B, D) -> (B,) long."""
        return self.log_joint(x0.to(torch.float64), torch.zeros(x0.shape[0], dtype=torch.float64)).argmax(1)


def make_gmm(dim: int, components: int, seed: int = 0, isotropic: bool = False) -> GMM:
    """A seeded random mixture with roughly unit variance per coordinate (what VP schedules assume).

    Means ~ N(0, 0.9^2 I); component stds log-uniform in [0.1, 0.4] (per coordinate unless isotropic);
    weights proportional to U(0.5, 1.5).
    """
    g = torch.Generator().manual_seed(seed)
    means = 0.9 * torch.randn(components, dim, generator=g, dtype=torch.float64)
    shape = (components, 1) if isotropic else (components, dim)
    log_std = math.log(0.1) + math.log(4.0) * torch.rand(shape, generator=g, dtype=torch.float64)
    weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
    return GMM(means, log_std.exp().expand(components, dim).clone(), weights / weights.sum())


class GMMDenoiser:
    """The exact denoiser under the denoiser contract D(x (B, D), sigma (B,), cond) -> x0_hat (B, D).

    Computes in float64 and returns x's dtype; ``calls`` counts model calls (batched calls count once).
    """

    def __init__(self, gmm: GMM):
        self.gmm, self.calls = gmm, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict | None = None) -> torch.Tensor:
        self.calls += 1
        return self.gmm.denoise(x, sigma).to(x.dtype)


def ode_states(gmm: GMM, x_T: torch.Tensor, sigma_start: float, sigmas_out: list[float]) -> list[torch.Tensor]:
    """PF-ODE states x(sigma) (B, D) at each of sigmas_out (descending, in (0, sigma_start]) from x_T (B, D) at
    sigma_start: one DOP853 solve (rtol = atol = 1e-10) in t = log sigma, read at the requested points."""
    from scipy.integrate import solve_ivp

    B, D = x_T.shape

    def rhs(t, y):  # t = log sigma: dx/dt = sigma dx/dsigma = x - D*(x, sigma)
        x = torch.from_numpy(y).reshape(B, D)
        return (x - gmm.denoise(x, math.exp(t))).reshape(-1).numpy()

    t_out = [math.log(s) for s in sigmas_out]
    sol = solve_ivp(rhs, (math.log(sigma_start), t_out[-1]), x_T.double().reshape(-1).numpy(),
                    method="DOP853", rtol=1e-10, atol=1e-10, t_eval=t_out)
    if not sol.success:
        raise RuntimeError(f"reference ODE failed: {sol.message}")
    return [torch.from_numpy(sol.y[:, j].copy()).reshape(B, D) for j in range(len(t_out))]


def reference_ode(gmm: GMM, x_T: torch.Tensor, sigma_start: float, sigma_min: float) -> torch.Tensor:
    """PF-ODE from x_T (B, D) at sigma_start to sigma_min (DOP853, rtol = atol = 1e-10), then D*(x, sigma_min)."""
    return gmm.denoise(ode_states(gmm, x_T, sigma_start, [sigma_min])[0], sigma_min)


def sliced_w2(a: torch.Tensor, b: torch.Tensor, n_proj: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2 between equal-size point sets a, b (N, D): sqrt(mean over random directions of W2^2)."""
    if a.shape != b.shape:
        raise ValueError(f"sliced_w2 needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    dirs = torch.randn(a.shape[1], n_proj, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, pb = (a.double() @ dirs).sort(0).values, (b.double() @ dirs).sort(0).values
    return float(((pa - pb) ** 2).mean().sqrt())


def weight_tv(gmm: GMM, x0: torch.Tensor) -> float:
    """Total variation between gmm.weights and the fractions of x0 (N, D) assigned to each component."""
    counts = torch.bincount(gmm.assign(x0), minlength=len(gmm.weights)).double()
    return float(0.5 * (counts / counts.sum() - gmm.weights).abs().sum())


_REFERENCE_CACHE: dict = {}


def _cached_reference(gmm: GMM, x_T: torch.Tensor, key: tuple) -> torch.Tensor:
    hit = _REFERENCE_CACHE.get(key)
    if hit is None or hit[0] is not gmm:
        if len(_REFERENCE_CACHE) > 32:
            _REFERENCE_CACHE.clear()
        hit = _REFERENCE_CACHE[key] = (gmm, reference_ode(gmm, x_T, key[2], key[3]))
    return hit[1]


def evaluate(sampler, spacing: str, nfe: int, gmm: GMM, n: int = 2000, seed: int = 0,
             schedule: DiscreteSchedule | None = None, reference: bool = True, **opts) -> dict:
    """Run a sampler on the exact GMM denoiser and score it.

    Args:
        sampler: a registered name (steps chosen by ``steps_for_nfe``) or a sampler function (1 call/step).
        spacing: any ``schedules.SPACINGS`` name; the grid comes from ``sigma_grid(schedule, steps, spacing)``.
        nfe: the model-call budget; the returned ``nfe`` is the counted number of calls.
        n, seed: batch size; x_T = x0 + sigmas[0] n (exactly the noised data marginal) and sampler noise are seeded.
        schedule: the discrete schedule fixing sigma_min / sigma_max (default: linear betas, T = 1000).
        reference: compute the ODE-RMSE (a DOP853 solve, cached per gmm, seed, n, sigmas[0]).
        opts: passed to the sampler (e.g. eta, S_churn, n_steps_each).
    Returns: dict with sampler, spacing, steps, nfe, ode_rmse (or None), sw2, sw2_floor, weight_tv, weight_tv_floor.
    """
    from latentdiff.sampling import get_sampler, steps_for_nfe

    schedule = schedule or DiscreteSchedule("linear")
    if isinstance(sampler, str):
        name, fn, steps = sampler, get_sampler(sampler), steps_for_nfe(sampler, nfe, **opts)
    else:
        name, fn, steps = getattr(sampler, "__name__", "custom"), sampler, nfe
    sigmas = sigma_grid(schedule, steps, spacing)
    g = torch.Generator().manual_seed(seed)
    x0_true, _ = gmm.sample(n, g)
    x_T = x0_true + float(sigmas[0]) * torch.randn(n, gmm.dim, generator=g, dtype=torch.float64)
    fresh = [gmm.sample(n, torch.Generator().manual_seed(seed + 10_000 + j))[0] for j in range(2)]

    D = GMMDenoiser(gmm)
    out = fn(D, x_T.clone(), sigmas, generator=torch.Generator().manual_seed(seed + 1), **opts)
    result = {"sampler": name, "spacing": spacing, "steps": steps, "nfe": D.calls, "ode_rmse": None,
              "sw2": sliced_w2(out, fresh[0]), "sw2_floor": sliced_w2(fresh[1], fresh[0]),
              "weight_tv": weight_tv(gmm, out), "weight_tv_floor": weight_tv(gmm, fresh[1])}
    if reference:
        key = (seed, n, float(sigmas[0]), schedule.sigma_min)
        ref = _cached_reference(gmm, x_T, key)
        result["ode_rmse"] = float(((out.double() - ref) ** 2).mean().sqrt())
    return result


def ode_rmse_table(names: list[str], spacings: list[str], steps: list[int], gmm: GMM, n: int = 1000, seed: int = 0,
                   schedule: DiscreteSchedule | None = None) -> list[dict]:
    """ODE-RMSE of registered samplers on every grid ``sigma_grid(schedule, k, spacing)``, k in steps.

    One reference trajectory serves all grids: x_T = x0 + sigma_max n (the noised data marginal) is
    solved once (``ode_states``) and read at every grid's first sigma (below sigma_max for ``leading``);
    the PF-ODE carries the marginal exactly, so that state is an exact draw at sigmas[0] and the
    trajectory's D*(x(sigma_min), sigma_min) is its reference. Returns one row per (sampler, spacing,
    steps): dict(sampler, spacing, steps, ode_rmse) or, when the sampler refuses the grid with a
    ValueError, ode_rmse None and ``error`` its message. A non-finite sample gives ode_rmse = inf.
    """
    from latentdiff.sampling import get_sampler

    schedule = schedule or DiscreteSchedule("linear")
    grids = {(sp, k): sigma_grid(schedule, k, sp) for sp in spacings for k in steps}
    g = torch.Generator().manual_seed(seed)
    x_T = gmm.sample(n, g)[0] + schedule.sigma_max * torch.randn(n, gmm.dim, generator=g, dtype=torch.float64)
    starts = sorted({float(s[0]) for s in grids.values()} - {schedule.sigma_max}, reverse=True)
    states = ode_states(gmm, x_T, schedule.sigma_max, starts + [schedule.sigma_min])
    x_at = {schedule.sigma_max: x_T, **dict(zip(starts, states[:-1]))}
    ref = gmm.denoise(states[-1], schedule.sigma_min)
    rows = []
    for (sp, k), sigmas in grids.items():
        for name in names:
            row = {"sampler": name, "spacing": sp, "steps": k, "ode_rmse": None}
            try:
                out = get_sampler(name)(GMMDenoiser(gmm), x_at[float(sigmas[0])].clone(), sigmas,
                                        generator=torch.Generator().manual_seed(seed + 1))
            except ValueError as e:
                rows.append({**row, "error": str(e)})
                continue
            err = float(((out.double() - ref) ** 2).mean().sqrt())
            rows.append({**row, "ode_rmse": err if math.isfinite(err) else math.inf})
    return rows
