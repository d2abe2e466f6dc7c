"""Step schedules fitted to a model: place the NFE sigmas where this model's ODE needs them.

Why. At 5-10 model calls no fixed spacing is right for every model. On the exact-score Gaussian
mixture (latentdiff.eval.gmm) the error has two parts that want opposite grids: samples that
end in the wrong mixture component (decided at sigma ~ 1-10, where the posterior over components
resolves; uniform-in-t ``trailing`` grids put their steps there) and the position inside the
component (decided at sigma ~ the component widths, 0.1-0.4; ``logsnr``/``karras`` grids put
their steps there). The best trade depends on the data and the sampler, so we fit it.

How (the idea of LD3, Tong et al. 2024, "Learning to Discretize Denoising Diffusion ODEs", with a
derivative-free search instead of back-propagation through the solver). A pilot batch of x_T
is solved accurately once (``reference``: the exact ODE for the GMM, or a many-step solve of the
same model); then the n - 1 free log-sigmas of an n-call grid (sigmas[0] = sigma_max is where x_T
lives) are chosen by Nelder-Mead to minimise the sampler's RMSE to that reference on the pilot
batch, started from the best standard spacings and keeping the best result. The fitted grid is then used on
fresh x_T: the pilot and the evaluation noise never overlap, and the pilot's model calls
(``pilot_calls``) are a one-off cost per (model, sampler, NFE), reported, never hidden.

Parametrisation: log sigma_i = log sigma_max - sum_{j <= i} exp(theta_j) (strictly descending by
construction), scaled back to end at sigma_min if it would go below (the model is trained only on
[sigma_min, sigma_max]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class FittedGrid:
    """sigmas (n+1,) float64 ending in 0; pilot_rmse of the fitted and of the best starting grid; pilot_calls."""

    sigmas: torch.Tensor
    pilot_rmse: float
    start_rmse: float
    start_spacing: str
    pilot_calls: int


def grid_from_theta(theta: np.ndarray, sigma_max: float, sigma_min: float) -> torch.Tensor:
    """theta (n-1,) log-decrements of log sigma -> sigmas (n+1,) = [sigma_max, ..., >= sigma_min, 0]."""
    dec = np.exp(np.clip(theta, -30, 30))
    span = math.log(sigma_max) - math.log(sigma_min)
    if dec.sum() > span:
        dec = dec * (span / dec.sum())
    log_s = math.log(sigma_max) - np.concatenate([[0.0], np.cumsum(dec)])
    return torch.cat([torch.from_numpy(np.exp(log_s)), torch.zeros(1, dtype=torch.float64)])


def theta_from_grid(sigmas: torch.Tensor) -> np.ndarray:
    """Inverse of ``grid_from_theta`` for a grid [sigma_max, ..., 0] (the final 0 dropped)."""
    log_s = sigmas[:-1].double().log().numpy()
    return np.log(np.maximum(-np.diff(log_s), 1e-12))


def fit_sigmas(sampler, denoise, x_T: torch.Tensor, x_ref: torch.Tensor, starts: dict, sigma_min: float,
               max_evals: int = 400, n_starts: int = 2, cond=None, progress: bool = False) -> FittedGrid:
    """Fit the sigmas of a deterministic sampler to a pilot reference.

    Args:
        sampler: a stateless sampler ``sampler(denoise, x, sigmas, cond=...) -> x0``.
        denoise: the model under the denoiser contract.
        x_T: pilot noise (B, ...) at sigma_max = the first sigma of every start grid.
        x_ref: (B, ...) accurate ODE solutions from x_T (a many-step solve of the same model, or an exact one).
        starts: {spacing name: sigmas (n+1,)} start grids, all with the same n and sigmas[0].
        sigma_min: the smallest sigma the model was trained on.
        max_evals: Nelder-Mead pilot runs per start.
        n_starts: how many of the start grids (the best on the pilot first) are refined.
        progress: show a bar over the pilot solves (at most len(starts) + n_starts * max_evals).
    Returns: FittedGrid; its sigmas have the start grids' length.
    """
    from scipy.optimize import minimize
    from tqdm.auto import tqdm

    sigma_max = float(next(iter(starts.values()))[0])
    calls = 0
    bar = tqdm(total=len(starts) + min(n_starts, len(starts)) * max_evals, desc="fit sigma grid", unit="solve",
               disable=not progress)

    def rmse(sigmas: torch.Tensor) -> float:
        nonlocal calls
        calls += len(sigmas) - 1
        out = sampler(denoise, x_T.clone(), sigmas, cond=cond or {})
        err = float(((out.double() - x_ref.double()) ** 2).mean().sqrt())
        bar.update(1)
        return err if math.isfinite(err) else 1e6

    with bar:  # Nelder-Mead may converge before max_evals: the bar then ends short of its total
        start_err = {name: rmse(s) for name, s in starts.items()}
        best_name = min(start_err, key=start_err.get)
        best_theta, best_err = theta_from_grid(starts[best_name]), start_err[best_name]
        for name in sorted(start_err, key=start_err.get)[:n_starts]:
            res = minimize(lambda th: rmse(grid_from_theta(th, sigma_max, sigma_min)), theta_from_grid(starts[name]),
                           method="Nelder-Mead", options={"maxfev": max_evals, "xatol": 1e-3, "fatol": 1e-6})
            if res.fun < best_err:
                best_theta, best_err = res.x, float(res.fun)
            bar.set_postfix(rmse=f"{best_err:.4g}")
    return FittedGrid(grid_from_theta(best_theta, sigma_max, sigma_min), best_err, start_err[best_name],
                      best_name, calls)


__all__ = ["FittedGrid", "fit_sigmas", "grid_from_theta", "theta_from_grid"]
