"""Samplers on a Gaussian mixture with its exact denoiser: convergence orders, distributions, errors."""

import math

import numpy as np
import pytest
import torch

from latentdiff.eval.gmm import GMMDenoiser, evaluate, make_gmm, sliced_w2
from latentdiff.sampling import get_sampler
from latentdiff.schedules import DiscreteSchedule, sigma_grid


def test_gmm_denoiser_equals_brute_force_posterior_mean_1d():
    gmm = make_gmm(1, 3, seed=3)
    x0 = torch.linspace(-6, 6, 200_001, dtype=torch.float64)  # quadrature grid over the data
    prior = sum(w * torch.exp(-0.5 * ((x0 - m) / s) ** 2) / s for w, m, s in
                zip(gmm.weights, gmm.means[:, 0], gmm.stds[:, 0]))
    for sigma in (0.05, 0.3, 1.0, 5.0):
        x = torch.tensor([[-1.3], [0.2], [0.9], [2.5]], dtype=torch.float64)
        lik = torch.exp(-0.5 * ((x - x0[None]) / sigma) ** 2)  # (4, grid)
        brute = (lik * prior * x0).sum(1) / (lik * prior).sum(1)
        torch.testing.assert_close(gmm.denoise(x, sigma)[:, 0], brute, rtol=1e-7, atol=1e-7)


def test_denoiser_contract_and_call_count():
    D = GMMDenoiser(make_gmm(3, 2, seed=0))
    x = torch.randn(5, 3)
    out = D(x, torch.full((5,), 2.0), None)
    assert out.shape == x.shape and out.dtype == x.dtype and D.calls == 1


# Ranges where discretisation error dominates: at fewer steps trajectories of this mixture still
# switch components (pre-asymptotic, RMSE falls erratically); at these step counts the error is
# 1e-2..1e-5, far above the reference ODE's 1e-10 tolerance. UniPC's corrector (UniC) raises
# its order from p to p + 1 (Zhao et al. 2023, Theorem 3.3), LMS is 4th order but starts at order 1.
ORDERS = {  # name: (NFEs, min slope, max slope)
    "euler": ([256, 512, 1024, 2048], 0.8, 1.3),
    "heun": ([63, 127, 255], 1.7, 2.5),
    "dpmpp_2m": ([64, 128, 256], 1.7, 2.5),
    "unipc_bh2": ([64, 128, 256], 1.8, 3.5),
    "unipc_bh3": ([64, 128, 256], 3.5, 5.0),
    "dpmpp_3m": ([64, 128, 256], 2.5, 3.6),
    "lms": ([64, 128, 256], 2.8, 4.5),
}


@pytest.mark.parametrize("name", sorted(ORDERS))
def test_ode_error_falls_at_the_theoretical_order(name):
    nfes, lo, hi = ORDERS[name]
    gmm = make_gmm(4, 4, seed=0)
    runs = [evaluate(name, "logsnr", nfe, gmm, n=200, seed=0) for nfe in nfes]
    calls = [r["nfe"] for r in runs]
    slope = -np.polyfit(np.log(calls), np.log([r["ode_rmse"] for r in runs]), 1)[0]
    assert lo < slope < hi, f"{name}: slope {slope:.2f} over NFE {calls}"


def _true_sets(gmm, n):
    return [gmm.sample(n, torch.Generator().manual_seed(100 + j))[0] for j in range(2)]


def _run(name, gmm, sigmas, n, seed, **opts):
    g = torch.Generator().manual_seed(seed)
    x = gmm.sample(n, g)[0] + float(sigmas[0]) * torch.randn(n, gmm.dim, generator=g, dtype=torch.float64)
    return get_sampler(name)(GMMDenoiser(gmm), x, sigmas, generator=g, **opts)


def test_ddim_eta1_matches_ddpm_in_distribution():
    gmm, n = make_gmm(2, 3, seed=1), 2000
    sigmas = sigma_grid(DiscreteSchedule("linear"), 20, "logsnr")
    a, b = _run("ddim_eta1", gmm, sigmas, n, 1), _run("ddpm", gmm, sigmas, n, 2)
    t1, t2 = _true_sets(gmm, n)
    assert sliced_w2(a, b) < 2 * sliced_w2(t1, t2)


@pytest.mark.parametrize("name,steps,opts", [
    ("langevin", 20, dict(n_steps_each=50, eps=1e-4)),  # alpha_L = sigma_L^2 (sigma_L = 0.01)
    ("pc", 100, dict(snr=0.16, n_corrector=1)),
    ("euler_a", 50, {}),
    ("dpmpp_2m_sde", 50, {}),
    ("heun", 30, dict(S_churn=10.0)),
])
def test_stochastic_samplers_reach_the_distribution(name, steps, opts):
    gmm, n = make_gmm(2, 3, seed=1), 2000
    sigmas = sigma_grid(DiscreteSchedule("linear"), steps, "logsnr")
    out = _run(name, gmm, sigmas, n, 3, **opts)
    t1, t2 = _true_sets(gmm, n)
    assert sliced_w2(out, t1) < 2 * sliced_w2(t1, t2)


@pytest.mark.parametrize("name,order", [("heun", 2), ("dpmpp_2m_sde", 2), ("unipc_bh2", 2), ("unipc_bh3", 3),
                                        ("dpmpp_3m", 3), ("lms", 4)])
def test_fewer_steps_than_the_order_raise(name, order):
    D = GMMDenoiser(make_gmm(2, 2, seed=0))
    sigmas = sigma_grid(DiscreteSchedule("linear"), order - 1, "karras")
    with pytest.raises(ValueError, match="at least"):
        get_sampler(name)(D, torch.randn(4, 2, dtype=torch.float64), sigmas)
    get_sampler(name)(D, torch.randn(4, 2, dtype=torch.float64), sigma_grid(DiscreteSchedule("linear"), order, "karras"))


def test_repeated_sigma_raises():
    sigmas = torch.tensor([10.0, 1.0, 1.0, 0.1, 0.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="descending"):
        get_sampler("dpmpp_3m")(GMMDenoiser(make_gmm(2, 2)), torch.randn(3, 2, dtype=torch.float64), sigmas)


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="unipc_bh2"):
        get_sampler("unipc")
    with pytest.raises(ValueError, match="logsnr"):
        sigma_grid(DiscreteSchedule("linear"), 10, "nope")


@pytest.mark.parametrize("spacing", ["logsnr", "balanced"])
def test_new_spacings_descend_from_sigma_max_to_sigma_min(spacing):
    sched = DiscreteSchedule("linear")
    s = sigma_grid(sched, 12, spacing)
    assert s.shape == (13,) and s.dtype == torch.float64 and s[-1] == 0
    assert bool((s[1:] < s[:-1]).all())
    assert math.isclose(s[0], sched.sigma_max) and math.isclose(s[-2], sched.sigma_min)


def test_evaluate_counts_model_calls():
    gmm = make_gmm(3, 2, seed=0)
    r = evaluate("heun", "karras", 39, gmm, n=50, seed=0, reference=False)
    assert r["steps"] == 20 and r["nfe"] == 39  # every step keeps its correction: sigma ratios <= 3
    r = evaluate("heun", "karras", 9, gmm, n=50, seed=0, reference=False)
    assert r["steps"] == 5 and r["nfe"] == 5  # every step of this grid is longer than 3x: all Euler
    r = evaluate("pc", "karras", 9, gmm, n=50, seed=0, reference=False)
    assert r["nfe"] <= 9 and r["nfe"] == r["steps"] + (r["steps"] - 1)
