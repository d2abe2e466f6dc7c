"""DMD (objectives/dmd.py): the generator starts as the teacher's one-step x0 prediction, the
distribution-matching gradient is zero when the fake score equals the real one, and the surrogate
loss has exactly that gradient."""

import copy

import torch

from latentdiff.nn.unet import UNet, UNetConfig
from latentdiff.objectives.dmd import (OneStepGenerator, distribution_matching_grad, distribution_matching_loss,
                                       fake_score_loss, sample_noise_level)
from latentdiff.precond import Denoiser
from latentdiff.schedules import DiscreteSchedule


def _teacher() -> Denoiser:
    cfg = UNetConfig(image_size=8, in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(4,), norm_groups=4, dropout=0.0, num_classes=3)
    torch.manual_seed(0)
    net = UNet(cfg).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return Denoiser(net, DiscreteSchedule("cosine"), "v").requires_grad_(False)


def test_the_generator_starts_as_the_teachers_one_step_prediction():
    teacher = _teacher()
    generator = OneStepGenerator(teacher)
    z, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    cond = {"class_labels": labels}
    expected = teacher(z * teacher.sigma_max, torch.full((4,), teacher.sigma_max), cond)
    assert torch.equal(generator(z, cond), expected)
    assert all(p.requires_grad for p in generator.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())  # the teacher stays frozen


def test_the_dm_gradient_is_zero_when_fake_equals_real():
    teacher = _teacher()
    generator, fake = OneStepGenerator(teacher), copy.deepcopy(teacher)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 1, 8, 8, generator=g)
    x = generator(z, None)
    sigma = sample_noise_level(teacher, 4, g)
    assert ((sigma >= teacher.schedule.t_to_sigma(torch.tensor([20.0])).float() - 1e-6)
            & (sigma <= teacher.sigma_max)).all()
    loss, logs = distribution_matching_loss(x, teacher, fake, None, sigma, torch.randn(x.shape, generator=g))
    loss.backward()
    assert loss.item() == 0.0 and logs["dm_grad_norm"] == 0.0
    assert all(p.grad is None or not p.grad.any() for p in generator.parameters())


def test_the_surrogate_loss_has_the_dm_gradient():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    mu_real, mu_fake = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    grad = distribution_matching_grad(x.detach(), mu_real, mu_fake)
    norm = (mu_real - x.detach()).abs().flatten(1).mean(1).view(2, 1, 1, 1)
    torch.testing.assert_close(grad, (mu_fake - mu_real) / norm)

    class Fixed(torch.nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, x_t, sigma, cond):
            return self.out

    loss, _ = distribution_matching_loss(x, Fixed(mu_real), Fixed(mu_fake), None, torch.ones(2), torch.zeros_like(x))
    loss.backward()
    torch.testing.assert_close(x.grad, grad / x.numel())


def test_the_fake_score_loss_is_the_v_mse():
    teacher = _teacher()
    x, eps, sigma = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8), torch.tensor([0.5, 2.0, 10.0])
    s = sigma.view(-1, 1, 1, 1)
    x0_hat = teacher(x + s * eps, sigma, None)
    alpha, sigma_vp = 1 / (1 + s ** 2).sqrt(), s / (1 + s ** 2).sqrt()  # the VP view of the same point
    v_true, v_hat = alpha * eps - sigma_vp * x, alpha * ((x + s * eps) - x0_hat) / s - sigma_vp * x0_hat
    v_mse = ((v_hat - v_true) ** 2).mean()
    torch.testing.assert_close(fake_score_loss(teacher, x, None, sigma, eps), v_mse, rtol=1e-4, atol=1e-6)
