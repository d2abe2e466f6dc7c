"""Schedules: betas equal diffusers', conversions are exact inverses, sigma grids match diffusers' timesteps."""

import math

import pytest
import torch

from latentdiff import schedules as S

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("name,diffusers_kwargs", [
    ("linear", dict(beta_schedule="linear")),
    ("scaled_linear", dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)),  # Stable Diffusion's
    ("cosine", dict(beta_schedule="squaredcos_cap_v2")),
])
def test_betas_equal_diffusers(name, diffusers_kwargs):
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, **diffusers_kwargs).betas.double()
    ours = S.make_betas(name, 1000)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-9)


def test_cosine_alpha_bar_closed_form():
    """Nichol & Dhariwal eq. 17: alpha_bar_t = f(t)/f(0) wherever no beta is clipped."""
    T, s = 1000, 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    abar = S.alpha_bar_from_betas(S.cosine_betas(T, s))
    for i in (0, 10, 500, 900):
        assert abar[i].item() == pytest.approx(f(i + 1) / f(0), rel=1e-9)


def test_conversions_invert():
    abar = S.alpha_bar_from_betas(S.linear_betas())
    sigma = S.sigma_from_alpha_bar(abar)
    torch.testing.assert_close(S.alpha_bar_from_sigma(sigma), abar)
    torch.testing.assert_close(S.sigma_from_logsnr(S.logsnr_from_sigma(sigma)), sigma)
    torch.testing.assert_close(S.logsnr_from_sigma(sigma), torch.log(abar / (1 - abar)))


def test_sigma_to_t_round_trip():
    sched = S.DiscreteSchedule("linear")
    idx = torch.tensor([0, 1, 17, 500, 999])
    torch.testing.assert_close(sched.sigma_to_t(sched.sigmas[idx]), idx.double())
    t = torch.tensor([0.25, 3.5, 998.9], dtype=torch.float64)
    torch.testing.assert_close(sched.sigma_to_t(sched.t_to_sigma(t)), t)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [1, 10, 50, 999])
def test_timesteps_equal_diffusers(spacing, n):
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    ref.set_timesteps(n)
    assert S.timesteps(1000, n, spacing).tolist() == ref.timesteps.tolist()


def test_karras_sigmas_match_eq5():
    sig = S.karras_sigmas(10, 0.002, 80.0, 7.0)
    assert sig[0].item() == pytest.approx(80.0) and sig[-2].item() == pytest.approx(0.002) and sig[-1] == 0
    assert torch.all(sig[:-1][:-1] > sig[:-1][1:])


def test_bad_names_list_valid():
    with pytest.raises(ValueError, match="linear"):
        S.make_betas("quadratic")
    with pytest.raises(ValueError, match="trailing"):
        S.sigma_grid(S.DiscreteSchedule(), 10, "bogus")
