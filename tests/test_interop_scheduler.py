"""diffusers scheduler configs <-> our schedule and sampling defaults; LDM's schedule buffers."""

from __future__ import annotations

import pytest
import torch

from latentdiff.interop.scheduler import diffusion_from_scheduler, scheduler_from_diffusion
from latentdiff.interop.single_file import schedule_buffers, schedule_name
from latentdiff.objectives.diffusion import DiffusionConfig
from latentdiff.schedules import DiscreteSchedule, SCHEDULES, sigma_grid

SD_PNDM = {"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
           "beta_end": 0.012, "num_train_timesteps": 1000, "steps_offset": 1, "skip_prk_steps": True,
           "set_alpha_to_one": False}


def test_stable_diffusion_scheduler_maps_to_scaled_linear_eps_with_the_offset_noted():
    diffusion, sample = diffusion_from_scheduler(SD_PNDM)
    assert (diffusion.schedule, diffusion.parameterisation, diffusion.timesteps) == ("scaled_linear", "eps", 1000)
    assert sample["spacing"] == "leading" and "steps_offset" in sample["notes"][0]
    v, _ = diffusion_from_scheduler({**SD_PNDM, "prediction_type": "v_prediction"})
    assert v.parameterisation == "v"
    _, thresholded = diffusion_from_scheduler({"thresholding": True, "dynamic_thresholding_ratio": 0.99})
    assert thresholded["threshold"] == "dynamic" and thresholded["percentile"] == 0.99


def test_betas_without_a_latentdiff_schedule_are_refused_by_value():
    with pytest.raises(ValueError, match="beta_start=0.001"):
        diffusion_from_scheduler({**SD_PNDM, "beta_start": 0.001})
    with pytest.raises(ValueError, match="known: linear"):
        diffusion_from_scheduler({"beta_schedule": "sigmoid"})
    with pytest.raises(ValueError, match="prediction_type 'flow'"):
        diffusion_from_scheduler({"prediction_type": "flow"})


@pytest.mark.parametrize("name", SCHEDULES)
def test_exported_scheduler_has_our_betas_and_trailing_sigmas(name):
    diffusers = pytest.importorskip("diffusers")
    config = scheduler_from_diffusion(DiffusionConfig(schedule=name), "trailing")
    theirs = diffusers.EulerDiscreteScheduler.from_config(config)
    ours = DiscreteSchedule(name, 1000)
    assert torch.allclose(theirs.betas.double(), ours.betas, rtol=1e-5, atol=1e-9)
    theirs.set_timesteps(10)
    assert torch.allclose(theirs.sigmas.double(), sigma_grid(ours, 10, "trailing"), rtol=1e-4)
    assert diffusion_from_scheduler(config)[0].schedule == name


@pytest.mark.parametrize("name", SCHEDULES)
def test_ldm_schedule_buffers_are_ddpm_closed_forms(name):
    buffers = schedule_buffers(name)
    assert schedule_name(buffers) == name
    ours = DiscreteSchedule(name, 1000)
    assert torch.allclose(buffers["alphas_cumprod"].double(), ours.alpha_bar, rtol=1e-5)
    # the posterior mean q(x_{t-1} | x_t, x_0) = coef1 x_0 + coef2 x_t (Ho et al. 2020, eq. 7) is the
    # same whether computed from the buffers or from alpha_bar directly; t = 500 as a spot check
    t, a, a_prev = 500, ours.alpha_bar[500], ours.alpha_bar[499]
    beta = 1 - a / a_prev
    assert torch.isclose(buffers["posterior_mean_coef1"][t].double(), beta * a_prev.sqrt() / (1 - a), rtol=1e-4)
    assert torch.isclose(buffers["posterior_mean_coef2"][t].double(), (1 - a_prev) * (1 - beta).sqrt() / (1 - a),
                         rtol=1e-4)
