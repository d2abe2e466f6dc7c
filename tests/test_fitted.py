"""Step schedules fitted to a model on a pilot batch (latentdiff.sampling.fitted)."""

import math

import numpy as np
import pytest
import torch

from latentdiff.eval.gmm import GMMDenoiser, make_gmm, reference_ode
from latentdiff.sampling import get_sampler
from latentdiff.sampling.fitted import fit_sigmas, grid_from_theta, theta_from_grid
from latentdiff.schedules import DiscreteSchedule, sigma_grid


def test_theta_round_trip_and_bounds():
    sched = DiscreteSchedule("linear")
    grid = sigma_grid(sched, 7, "logsnr")
    torch.testing.assert_close(grid_from_theta(theta_from_grid(grid), sched.sigma_max, sched.sigma_min), grid)
    # any theta gives a strictly descending grid from sigma_max that stays >= sigma_min and ends in 0
    for theta in (np.full(6, 5.0), np.linspace(-3, 3, 6), np.zeros(6)):
        s = grid_from_theta(theta, sched.sigma_max, sched.sigma_min)
        assert len(s) == 8 and float(s[-1]) == 0.0 and math.isclose(float(s[0]), sched.sigma_max)
        assert bool((s[1:] < s[:-1]).all()) and float(s[-2]) >= sched.sigma_min * (1 - 1e-12)


def _batch(gmm, sched, n, seed):
    g = torch.Generator().manual_seed(seed)
    x_T = gmm.sample(n, g)[0] + sched.sigma_max * torch.randn(n, gmm.dim, generator=g, dtype=torch.float64)
    return x_T, reference_ode(gmm, x_T, sched.sigma_max, sched.sigma_min)


def _rmse(name, gmm, sigmas, x_T, ref):
    out = get_sampler(name)(GMMDenoiser(gmm), x_T.clone(), sigmas)
    return float(((out - ref) ** 2).mean().sqrt())


@pytest.mark.parametrize("name", ["dpmpp_3m", "unipc_bh3"])
def test_fitted_grid_beats_every_standard_grid_on_held_out_noise(name):
    """Fit on one pilot batch, score on a batch of other seeds: the gain must carry over."""
    gmm, sched, nfe = make_gmm(8, 4, seed=2), DiscreteSchedule("linear"), 6
    pilot, held_out = _batch(gmm, sched, 500, 1), _batch(gmm, sched, 1000, 2)
    starts = {sp: sigma_grid(sched, nfe, sp) for sp in ("trailing", "logsnr", "karras", "balanced")}
    fit = fit_sigmas(get_sampler(name), GMMDenoiser(gmm), *pilot, starts, sched.sigma_min, max_evals=300)
    assert len(fit.sigmas) == nfe + 1 and fit.pilot_rmse <= fit.start_rmse
    assert fit.pilot_calls >= 300 * nfe  # the one-off cost is counted
    best_standard = min(_rmse(name, gmm, s, *held_out) for s in starts.values())
    fitted = _rmse(name, gmm, fit.sigmas, *held_out)
    assert fitted < 0.8 * best_standard, f"fitted {fitted:.4f} vs best standard grid {best_standard:.4f}"


def test_fitted_is_not_a_pure_spacing():
    with pytest.raises(ValueError, match="depends on the model"):
        sigma_grid(DiscreteSchedule("linear"), 5, "fitted")
