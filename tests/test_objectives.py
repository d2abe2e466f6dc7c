"""Losses: Algorithm 1 equals its formula; v/x0 targets; min-SNR weights; L_vlb equals a direct KL."""

import math

import pytest
import torch

from latentdiff.objectives import DiffusionConfig, DiffusionLoss, snr_weight
from latentdiff.objectives.learned_variance import posterior_log_variance_table, vlb_term
from latentdiff.precond import Denoiser, training_target
from latentdiff.schedules import DiscreteSchedule


class Recorder(torch.nn.Module):
    """A fixed 'network' that returns a known function of its inputs and records them."""

    def __init__(self, out_channels_factor=1):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3))
        self.factor = out_channels_factor

    def forward(self, x, t, class_labels=None):
        self.seen = (x, t, class_labels)
        out = self.w * x + 1e-3 * t.view(-1, 1, 1, 1)
        return torch.cat([out, torch.tanh(out)], 1) if self.factor == 2 else out


def test_algorithm1_loss_equals_formula():
    torch.manual_seed(0)
    x0 = torch.rand(6, 1, 4, 4) * 2 - 1
    loss_fn = DiffusionLoss(DiffusionConfig(schedule="linear"))
    net = Recorder()
    g = torch.Generator().manual_seed(7)
    loss, _ = loss_fn(net, {"x": x0}, g)
    # Re-draw the same t and eps, then evaluate ||eps - eps_theta(sqrt(abar) x0 + sqrt(1-abar) eps, t)||^2 by hand.
    g = torch.Generator().manual_seed(7)
    t = torch.randint(0, 1000, (6,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t].float().view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    expected = ((eps - (0.3 * x_t + 1e-3 * t.view(-1, 1, 1, 1))) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(net.seen[1], t.float())


@pytest.mark.parametrize("param", ["eps", "v", "x0"])
def test_denoiser_inverts_each_target(param):
    """An oracle backbone that outputs the exact target makes D return x0 exactly."""
    sched = DiscreteSchedule("cosine")
    torch.manual_seed(1)
    x0, eps = torch.randn(4, 3, 5, 5, dtype=torch.float64), torch.randn(4, 3, 5, 5, dtype=torch.float64)
    t = torch.tensor([0, 10, 400, 999])
    abar = sched.alpha_bar[t].view(-1, 1, 1, 1)
    sigma = sched.sigmas[t]

    class Oracle(torch.nn.Module):
        def forward(self, x_t, t_in, **_):
            assert torch.allclose(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * eps)
            assert torch.allclose(t_in.double(), t.double())
            return training_target(param, x0, eps, abar)

    D = Denoiser(Oracle(), sched, param)
    x = x0 + sigma.view(-1, 1, 1, 1) * eps  # VE view
    # precond casts sigma to float32: compare at float32 precision
    torch.testing.assert_close(D(x, sigma, None), x0, rtol=1e-5, atol=1e-5)


def test_min_snr_weights():
    snr = torch.tensor([0.1, 1.0, 5.0, 100.0])
    torch.testing.assert_close(snr_weight(snr, "eps", 5.0), torch.tensor([1.0, 1.0, 1.0, 0.05]))
    torch.testing.assert_close(snr_weight(snr, "v", 5.0), torch.tensor([0.1 / 1.1, 0.5, 5 / 6, 5 / 101]))
    torch.testing.assert_close(snr_weight(snr, "x0", 5.0), torch.tensor([0.1, 1.0, 5.0, 5.0]))
    torch.testing.assert_close(snr_weight(snr, "eps", None), torch.ones(4))


def test_vlb_equals_direct_kl():
    """L_t for t > 0 equals KL(q(x_{t-1}|x_t,x0) || p_theta) computed with torch.distributions from scratch."""
    sched = DiscreteSchedule("linear")
    torch.manual_seed(2)
    B = 3
    x0 = torch.rand(B, 1, 3, 3, dtype=torch.float64) * 2 - 1
    t = torch.tensor([1, 250, 999])
    x_t = torch.randn_like(x0)
    eps_hat = torch.randn_like(x0)
    v = torch.rand_like(x0) * 2 - 1
    got = vlb_term(sched, "eps", x0, x_t, t, eps_hat, v)

    betas, abar = sched.betas, sched.alpha_bar
    expected = []
    for b in range(B):
        i = int(t[b])
        a, a_prev, beta = abar[i], abar[i - 1], betas[i]
        mean_q = (a_prev.sqrt() * beta * x0[b] + (1 - beta).sqrt() * (1 - a_prev) * x_t[b]) / (1 - a)
        var_q = beta * (1 - a_prev) / (1 - a)
        x0_hat = (x_t[b] - (1 - a).sqrt() * eps_hat[b]) / a.sqrt()
        mean_p = (a_prev.sqrt() * beta * x0_hat + (1 - beta).sqrt() * (1 - a_prev) * x_t[b]) / (1 - a)
        f = (v[b] + 1) / 2
        var_p = torch.exp(f * beta.log() + (1 - f) * var_q.log())
        q = torch.distributions.Normal(mean_q, var_q.sqrt())
        p = torch.distributions.Normal(mean_p, var_p.sqrt())
        expected.append(torch.distributions.kl_divergence(q, p).mean() / math.log(2))
    torch.testing.assert_close(got, torch.stack(expected))


def test_vlb_t0_is_discretized_nll():
    sched = DiscreteSchedule("linear")
    x0 = torch.tensor([[[[-1.0, 0.0], [1.0, 0.5]]]], dtype=torch.float64)
    eps_hat = torch.zeros_like(x0)
    v = torch.zeros_like(x0)
    x_t = x0 * sched.alpha_bar[0].sqrt()
    got = vlb_term(sched, "eps", x0, x_t, torch.tensor([0]), eps_hat, v)
    # By hand: at t = 0 the mean is x0_hat = x_t / sqrt(abar_0) = x0 and the variance exp(mean of the log table).
    log_bt, log_b = posterior_log_variance_table(sched)
    std = torch.exp(0.5 * (0.5 * log_b[0] + 0.5 * log_bt[0]))
    N = torch.distributions.Normal(x0, std)
    probs = torch.where(x0 < -0.999, N.cdf(x0 + 1 / 255), torch.where(x0 > 0.999, 1 - N.cdf(x0 - 1 / 255),
                                                                       N.cdf(x0 + 1 / 255) - N.cdf(x0 - 1 / 255)))
    torch.testing.assert_close(got, (-probs.log().mean() / math.log(2)).view(1))


class SplitHeads(torch.nn.Module):
    """Mean channels depend only on w_mean, variance channels only on w_var."""

    def __init__(self, learned_variance):
        super().__init__()
        self.w_mean = torch.nn.Parameter(torch.tensor(0.3))
        self.w_var = torch.nn.Parameter(torch.tensor(0.2))
        self.learned_variance = learned_variance

    def forward(self, x, t, class_labels=None):
        mean = self.w_mean * x
        return torch.cat([mean, torch.tanh(self.w_var * x)], 1) if self.learned_variance else mean


def test_hybrid_loss_stop_gradient_on_mean():
    """Nichol & Dhariwal eq. 16: L_vlb trains only the variance, so the mean's gradient is L_simple's."""
    torch.manual_seed(3)
    x0 = torch.rand(8, 1, 4, 4) * 2 - 1
    hybrid_net, simple_net = SplitHeads(True), SplitHeads(False)
    hybrid, logs = DiffusionLoss(DiffusionConfig(learned_variance=True))(hybrid_net, {"x": x0},
                                                                         torch.Generator().manual_seed(0))
    simple, _ = DiffusionLoss(DiffusionConfig())(simple_net, {"x": x0}, torch.Generator().manual_seed(0))
    assert logs["vlb"] > 0
    g_mean, g_var = torch.autograd.grad(hybrid, [hybrid_net.w_mean, hybrid_net.w_var])
    torch.testing.assert_close(g_mean, torch.autograd.grad(simple, simple_net.w_mean)[0])
    assert g_var.abs() > 0  # and the variance head does learn from L_vlb
