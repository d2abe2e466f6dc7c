"""The diffusers-style SamplerScheduler reproduces the stateless samplers exactly (float64)."""

import pytest
import torch

from latentdiff.precond import Denoiser
from latentdiff.sampling import get_sampler
from latentdiff.sampling.adapter import SamplerScheduler
from latentdiff.schedules import DiscreteSchedule, sigma_grid


class ToyNet(torch.nn.Module):
    """A smooth nonlinear backbone net(x_t (B, D), t (B,)) -> (B, D) that depends on t."""

    def __init__(self, dim: int = 6):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w = torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim**0.5

    def forward(self, x, t):
        t = t.to(torch.float32).to(x.dtype).reshape(-1, 1)  # as precond.Denoiser passes it
        return torch.tanh(x @ self.w) * (1 + t / 1000) + 0.1 * x


def run_adapter(sched: SamplerScheduler, net, x_T, steps, generator=None):
    """Exactly diffusers' user loop."""
    sched.set_timesteps(steps)
    x = x_T * sched.init_noise_sigma
    for t in sched.timesteps:
        out = net(sched.scale_model_input(x, t), t.expand(x.shape[0]))
        x = sched.step(out, t, x, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("name,spacing,param", [
    ("ddim", "trailing", "eps"), ("dpmpp_2m", "logsnr", "v"), ("euler", "karras", "x0"),
    ("heun", "karras", "eps"), ("unipc_bh2", "logsnr", "eps"), ("unipc_bh3", "trailing", "v"),
    ("euler_a", "trailing", "v"),
])
def test_adapter_equals_stateless_sampler(name, spacing, param):
    schedule, net, steps = DiscreteSchedule("linear"), ToyNet(), 8
    x_T = torch.randn(5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigmas = sigma_grid(schedule, steps, spacing)
    D = Denoiser(lambda x, t: net(x, t), schedule, param)
    calls = []
    counted = lambda x, s, c: (calls.append(float(s[0])), D(x, s, c))[1]  # noqa: E731
    expected = get_sampler(name)(counted, x_T * (1 + sigmas[0] ** 2).sqrt(), sigmas,
                                 generator=torch.Generator().manual_seed(7))
    sched = SamplerScheduler(name, schedule, spacing, param)
    got = run_adapter(sched, net, x_T, steps, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, expected)
    assert sched.call_sigmas.tolist() == calls  # one timestep per model call (heun: 2 steps - 1)
    torch.testing.assert_close(sched.timesteps, schedule.sigma_to_t(torch.tensor(calls, dtype=torch.float64)))


def test_adapter_rerun_and_abandon():
    """A second loop (after an abandoned one) gives the same result as a fresh scheduler."""
    schedule, net = DiscreteSchedule("linear"), ToyNet()
    x_T = torch.randn(3, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sched = SamplerScheduler("dpmpp_2m", schedule, "logsnr")
    sched.set_timesteps(6)
    x = x_T * sched.init_noise_sigma
    t = sched.timesteps[0]
    sched.step(net(sched.scale_model_input(x, t), t.expand(3)), t, x)  # abandoned after one step
    again = run_adapter(sched, net, x_T, 6)
    fresh = run_adapter(SamplerScheduler("dpmpp_2m", schedule, "logsnr"), net, x_T, 6)
    torch.testing.assert_close(again, fresh)


def test_unknown_sampler_lists_valid_names():
    with pytest.raises(ValueError, match="valid: .*dpmpp_2m.*euler"):
        SamplerScheduler("nope", DiscreteSchedule("linear"))


def test_churn_before_first_call_raises():
    sched = SamplerScheduler("heun", DiscreteSchedule("linear"), "karras", S_churn=5.0)
    net = ToyNet()
    with pytest.raises(ValueError, match="before its first model call"):
        run_adapter(sched, net, torch.randn(2, 6, dtype=torch.float64), 4, torch.Generator().manual_seed(0))
