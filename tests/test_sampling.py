"""Samplers: Algorithm 2 literal == sigma form; DDIM(eta=1) == DDPM; CFG at scales 1 and 0; registry errors."""

import pytest
import torch

from latentdiff.nn import UNet, UNetConfig
from latentdiff.precond import Denoiser
from latentdiff.sampling import CFGDenoiser, get_sampler, prior_noise, sample_ddim, sample_ddpm, sample_ddpm_literal
from latentdiff.schedules import DiscreteSchedule, sigma_grid


class SmoothEps(torch.nn.Module):
    """A deterministic, nonlinear eps-'network' in float64 (depends on x and t)."""

    def forward(self, x, t, class_labels=None):
        return torch.tanh(0.7 * x + 0.001 * t.view(-1, 1, 1, 1).to(x.dtype)) * 0.9


@pytest.mark.parametrize("variance", ["small", "large"])
def test_algorithm2_literal_equals_sigma_form(variance):
    T = 100
    # a short chain keeps the test fast; Algorithm 2 is the same for any betas
    sched = DiscreteSchedule("custom", T, betas=torch.linspace(1e-3, 0.2, T, dtype=torch.float64))
    net = SmoothEps()
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    literal = sample_ddpm_literal(net, sched.betas, x_T, generator=torch.Generator().manual_seed(1), variance=variance)

    D = Denoiser(net, sched, "eps")
    sigmas = torch.cat([sched.sigmas.flip(0), torch.zeros(1, dtype=torch.float64)])
    x = x_T * (1 + sigmas[0] ** 2).sqrt()
    sigma_form = sample_ddpm(D, x, sigmas, generator=torch.Generator().manual_seed(1), variance=variance)
    torch.testing.assert_close(sigma_form, literal, rtol=1e-9, atol=1e-9)


def test_ddim_eta1_equals_ddpm_small_variance():
    sched = DiscreteSchedule("cosine")
    D = Denoiser(SmoothEps(), sched, "eps")
    sigmas = sigma_grid(sched, 20, "trailing")
    x = prior_noise((2, 1, 4, 4), float(sigmas[0]), torch.Generator().manual_seed(0)).double()
    a = sample_ddim(D, x, sigmas, generator=torch.Generator().manual_seed(5), eta=1.0)
    b = sample_ddpm(D, x, sigmas, generator=torch.Generator().manual_seed(5), variance="small")
    torch.testing.assert_close(a, b)


def test_ddim_eta0_is_deterministic_ode_step():
    """With an exact x0 oracle (data = a point), DDIM returns that point from any start."""
    sched = DiscreteSchedule("linear")
    target = torch.full((1, 1, 2, 2), 0.25, dtype=torch.float64)
    D = lambda x, sigma, cond: target.expand_as(x)
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64) * 80
    out = get_sampler("ddim")(D, x, sigma_grid(sched, 7, "leading"))
    torch.testing.assert_close(out, target.expand_as(out))


def tiny_class_unet():
    torch.manual_seed(0)
    cfg = UNetConfig(image_size=8, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                     num_classes=3, norm_groups=4, dropout=0.0)
    net = UNet(cfg).eval()
    for p in net.parameters():  # leave the zero init so outputs depend on the labels
        torch.nn.init.normal_(p, std=0.1)
    return net


def test_cfg_scale_one_is_conditional_and_zero_is_unconditional():
    D = Denoiser(tiny_class_unet(), DiscreteSchedule("linear"), "eps")
    x, sigma = torch.randn(4, 1, 8, 8), torch.full((4,), 3.0)
    cond, uncond = {"class_labels": torch.tensor([0, 1, 2, 1])}, {"class_labels": torch.full((4,), 3)}
    with torch.no_grad():
        c, u = D(x, sigma, cond), D(x, sigma, uncond)
        assert not torch.allclose(c, u)
        torch.testing.assert_close(CFGDenoiser(D, 1.0, uncond)(x, sigma, cond), c)
        torch.testing.assert_close(CFGDenoiser(D, 0.0, uncond)(x, sigma, cond), u)
        # the batched (2B) path at scale 3 equals the formula on the separate passes
        torch.testing.assert_close(CFGDenoiser(D, 3.0, uncond)(x, sigma, cond), u + 3.0 * (c - u), rtol=1e-4, atol=1e-5)


def test_learned_variance_sampling_runs_between_extremes():
    sched = DiscreteSchedule("linear")
    torch.manual_seed(0)
    cfg = UNetConfig(image_size=8, channels=8, channel_mult=(1,), num_res_blocks=1, attention_resolutions=(),
                     norm_groups=4)
    D = Denoiser(UNet(cfg, learned_variance=True).eval(), sched, "eps", learned_variance=True)
    sigmas = sigma_grid(sched, 5)
    x = prior_noise((2, 1, 8, 8), float(sigmas[0]), torch.Generator().manual_seed(0))
    out = sample_ddpm(D, x, sigmas, generator=torch.Generator().manual_seed(1), variance="learned")
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_unknown_sampler_lists_valid():
    with pytest.raises(ValueError, match="ddim"):
        get_sampler("nope")


def test_trajectory_strip_keeps_the_first_batch_in_step_order(tmp_path):
    import numpy as np
    from PIL import Image

    from latentdiff.io.images import TrajectoryStrip

    strip = TrajectoryStrip(rows=2)
    x = torch.zeros(3, 1, 8, 8)
    for i, value in enumerate((-1.0, 0.0, 1.0)):  # x0 predictions getting brighter step by step
        strip(i, torch.tensor(10.0 / (i + 1)), x, torch.full((3, 1, 8, 8), value))
    strip(0, torch.tensor(10.0), x, torch.full((3, 1, 8, 8), 0.5))  # a second batch: not recorded
    assert [t.shape[0] for t in strip.x0s] == [2, 2, 2] and strip.sigmas == pytest.approx([10.0, 5.0, 10.0 / 3])
    picture = np.asarray(Image.open(strip.save(tmp_path / "traj.png")).convert("L"), dtype=float)
    body = picture[picture.shape[0] // 2:]  # below the caption band
    thirds = [body[:, k * body.shape[1] // 3:(k + 1) * body.shape[1] // 3].mean() for k in range(3)]
    assert thirds[0] < thirds[1] < thirds[2]  # columns are steps, left to right


def test_dynamic_thresholding_matches_its_definition_on_a_hand_made_tensor():
    from latentdiff.sampling.guidance import dynamic_threshold

    # sample 0: |x| = 0..4 in steps of 0.5 (9 values); its 50% quantile is 2 -> clip to [-2, 2], divide by 2
    a = torch.linspace(-4, 4, 17)[8:].clone()
    a[1::2] *= -1
    b = torch.tensor([0.1, -0.5, 0.9, 0.2, 0.0, -0.3, 0.4, 0.6, -0.7])  # quantile < 1 -> s = 1: unchanged
    out = dynamic_threshold(torch.stack([a, b]), 0.5)
    torch.testing.assert_close(out[0], a.clamp(-2, 2) / 2)
    torch.testing.assert_close(out[1], b)
