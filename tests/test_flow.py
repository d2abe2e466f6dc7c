"""Rectified flow: the flow-matching loss equals its formula, the flow parameterisation's x0 is
x_t - t v (the backbone sees x_t and 1000 t), Euler in sigma is Euler in t on the flow ODE, every
registered sampler runs a flow model (exactly, on a point mass), and the flow schedule's maps."""

import pytest
import torch
from torch import nn

from latentdiff.objectives.diffusion import DiffusionConfig
from latentdiff.objectives.flow import FlowMatchingLoss, diffusion_loss
from latentdiff.precond import Denoiser
from latentdiff.sampling import SAMPLERS, get_sampler
from latentdiff.schedules import FlowSchedule, karras_sigmas, sigma_grid

FLOW = DiffusionConfig(parameterisation="flow")


class Linear(nn.Module):
    """A backbone whose output is a fixed function of (x_t, time): records what it was given."""

    def forward(self, x, t, **cond):
        self.seen = (x.clone(), t.clone())
        return 0.5 * x + t.view(-1, 1, 1, 1) / 1000


def test_flow_matching_loss_is_its_formula():
    x0 = torch.randn(4, 3, 8, 8)
    loss, _ = FlowMatchingLoss(FLOW)(Linear(), {"x": x0}, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the same draws, in the loss's order: t, then eps
    t = torch.sigmoid(torch.randn(4, generator=g))                      # logit-normal(0, 1)
    eps = torch.randn(x0.shape, generator=g)
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    v = 0.5 * x_t + t.view(-1, 1, 1, 1)                                  # Linear at time 1000 t
    assert loss.item() == pytest.approx(((v - (eps - x0)) ** 2).mean().item(), rel=1e-6)
    assert isinstance(diffusion_loss(FLOW), FlowMatchingLoss)
    with pytest.raises(ValueError, match="learned_variance"):
        DiffusionConfig(parameterisation="flow", learned_variance=True)


def test_the_flow_parameterisation_predicts_x0_as_x_t_minus_t_v():
    net = Linear()
    denoiser = Denoiser(net, FlowSchedule(), "flow")
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 3.0], dtype=torch.float64)
    x0 = denoiser(x, sigma)
    t = (sigma / (1 + sigma)).view(-1, 1, 1, 1).float()
    x_t = x / (1 + sigma.view(-1, 1, 1, 1).float())                     # the VE point scaled by 1 - t
    torch.testing.assert_close(net.seen[0], x_t)                        # the backbone sees x_t ...
    torch.testing.assert_close(net.seen[1], 1000 * t.flatten())         # ... at time 1000 t
    torch.testing.assert_close(x0, x_t - t * (0.5 * x_t + t), rtol=1e-6, atol=1e-6)


def test_the_flow_schedule_is_uniform_in_t_and_its_maps_invert():
    s = FlowSchedule(1000)
    t = s.sigmas / (1 + s.sigmas)
    torch.testing.assert_close(t, torch.arange(1, 1001, dtype=torch.float64) / 1001)
    torch.testing.assert_close(s.alpha_bar, 1 / (1 + s.sigmas ** 2))
    times = torch.tensor([0.0, 1.0, 250.0, 998.5], dtype=torch.float64)
    torch.testing.assert_close(s.sigma_to_t(s.t_to_sigma(times)), times)


def test_euler_in_sigma_is_euler_in_t_on_the_flow_ode():
    torch.manual_seed(0)
    net = Linear()
    denoiser = Denoiser(net, FlowSchedule(), "flow")
    sigmas = sigma_grid(FlowSchedule(), 6, "karras")
    z = torch.randn(2, 3, 8, 8)
    ours = get_sampler("euler")(denoiser, z * (1 + sigmas[0]).float(), sigmas)   # VE: x = x_t / (1 - t)
    ts = (sigmas / (1 + sigmas)).float()
    x = z
    for t, t_next in zip(ts[:-1], ts[1:]):                              # dx_t/dt = v(x_t, t)
        v = 0.5 * x + t
        x = x + (t_next - t) * v
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


class PointMass(nn.Module):
    """The exact velocity of data that is the single point x*: v = (x_t - x*) / t."""

    def __init__(self, point: torch.Tensor):
        super().__init__()
        self.point = point

    def forward(self, x, t, **cond):
        t = (t / 1000).view(-1, 1, 1, 1).to(x.dtype)
        return (x - (1 - t) * self.point) / t - self.point


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_runs_a_flow_model(name):
    point = torch.linspace(-1, 1, 3 * 4 * 4).view(1, 3, 4, 4)
    denoiser = Denoiser(PointMass(point), FlowSchedule(), "flow")
    torch.testing.assert_close(denoiser(torch.randn(2, 3, 4, 4), torch.tensor(2.0)), point.expand(2, -1, -1, -1),
                               rtol=1e-5, atol=1e-5)                    # the exact denoiser is x* itself
    # to sigma 0.01, not the schedule's 0.001: annealed Langevin's default step eps sigma_i^2 / sigma_L^2
    # (eps = 2e-5) is stable only while eps < 4 sigma_L^2, whatever the model
    sigmas = karras_sigmas(8, 0.01, FlowSchedule().sigma_max)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g) * float(sigmas[0])
    out = get_sampler(name)(denoiser, x, sigmas, generator=g)
    torch.testing.assert_close(out, point.expand(2, -1, -1, -1), rtol=0, atol=1e-3)


def test_what_needs_a_vp_model_refuses_a_flow_model_by_name(tmp_path):
    from latentdiff.objectives.dmd import DistributionMatching, DMDConfig
    from latentdiff.pipelines.likelihood import check_likelihood_checkpoint

    from latentdiff.objectives.diffusion import DiffusionLoss
    from latentdiff.objectives.superres import SuperResConfig, SuperResLoss

    with pytest.raises(ValueError, match="does not train"):  # a VP loss never trains a flow model silently
        SuperResLoss(FLOW, SuperResConfig())
    with pytest.raises(ValueError, match="does not train"):
        FlowMatchingLoss(DiffusionConfig(parameterisation="v"))
    assert type(diffusion_loss(DiffusionConfig())) is DiffusionLoss
    with pytest.raises(ValueError, match="rectified-flow teacher"):
        DistributionMatching(Denoiser(Linear(), FlowSchedule(), "flow"), DMDConfig(), FLOW)
    (tmp_path / "config.json").write_text('{"task": "diffusion", "diffusion": {"parameterisation": "flow"}}')
    (tmp_path / "model.safetensors").write_bytes(b"")  # read_config reads only the config
    with pytest.raises(ValueError, match="--method ode"):
        check_likelihood_checkpoint(tmp_path, ("vlb",))
    assert check_likelihood_checkpoint(tmp_path, ("ode",))["diffusion"]["parameterisation"] == "flow"
