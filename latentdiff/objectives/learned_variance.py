"""Learned reverse-process variance, Improved DDPM (Nichol & Dhariwal 2021, section 3.1).

The backbone outputs a second set of C channels v in [-1, 1]; the reverse
variance interpolates in log space between the two DDPM extremes (eq. 15):

    Sigma_theta = exp(f log beta_t + (1 - f) log beta~_t),   f = (v + 1) / 2,
    beta~_t     = (1 - abar_{t-1}) / (1 - abar_t) beta_t     (posterior variance, eq. 7 of Ho et al.)

and is trained by L_vlb (eq. 4-6) with a stop-gradient on the mean, added to
L_simple with weight lambda = 0.001 (eq. 16). All terms are in bits per dimension.
"""

from __future__ import annotations

import math

import torch

from latentdiff.schedules import DiscreteSchedule


def _take(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return table.to(like.device)[t].view(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def posterior_log_variance_table(schedule: DiscreteSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    """(log beta~_t, log beta_t), each (T,) float64; beta~_0 = 0 is clipped to beta~_1 as Nichol & Dhariwal do."""
    abar = schedule.alpha_bar
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    beta_tilde = schedule.betas * (1 - abar_prev) / (1 - abar)
    beta_tilde = torch.cat([beta_tilde[1:2], beta_tilde[1:]])
    return beta_tilde.log(), schedule.betas.log()


def posterior_mean(schedule: DiscreteSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean of q(x_{t-1} | x_t, x0), Ho et al. 2020 eq. 7. Tensors (B, ...), t (B,) int64 index."""
    abar = schedule.alpha_bar
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    coef_x0 = abar_prev.sqrt() * schedule.betas / (1 - abar)
    coef_xt = (1 - schedule.betas).sqrt() * (1 - abar_prev) / (1 - abar)
    return _take(coef_x0, t, x0) * x0 + _take(coef_xt, t, x_t) * x_t


def x0_from_output(parameterisation: str, out: torch.Tensor, x_t: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """Invert the backbone's target for x0 (abar broadcastable to x_t)."""
    if parameterisation == "eps":
        return (x_t - (1 - abar).sqrt() * out) / abar.sqrt()
    if parameterisation == "v":
        return abar.sqrt() * x_t - (1 - abar).sqrt() * out
    return out


def gaussian_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1)


def discretized_gaussian_nll(x0: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """-log p(x0) for data on 256 levels in [-1, 1] under N(mean, e^logvar), Ho et al. 2020 eq. 13. Nats."""
    std_inv = torch.exp(-0.5 * logvar)
    normal = torch.distributions.Normal(0.0, 1.0)
    cdf_plus = normal.cdf((x0 - mean + 1 / 255) * std_inv)
    cdf_minus = normal.cdf((x0 - mean - 1 / 255) * std_inv)
    prob = torch.where(x0 < -0.999, cdf_plus, torch.where(x0 > 0.999, 1 - cdf_minus, cdf_plus - cdf_minus))
    return -torch.log(prob.clamp(min=1e-12))


def model_log_variance(schedule: DiscreteSchedule, v_frac: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """log Sigma_theta from f = (v + 1)/2 in [0, 1], eq. 15. v_frac (B, C, H, W), t (B,)."""
    log_beta_tilde, log_beta = posterior_log_variance_table(schedule)
    return v_frac * _take(log_beta, t, v_frac) + (1 - v_frac) * _take(log_beta_tilde, t, v_frac)


def vlb_term(schedule: DiscreteSchedule, parameterisation: str, x0: torch.Tensor, x_t: torch.Tensor,
             t: torch.Tensor, out_mean: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """L_t of the variational bound per sample, bits/dim, (B,).

    ``out_mean`` is the backbone's mean output (pass it detached: the stop-gradient
    of eq. 16 lets L_vlb train only the variance); ``v`` its raw variance channels.
    t > 0: KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)); t = 0: the decoder NLL -log p(x0|x1).
    """
    abar = _take(schedule.alpha_bar, t, x_t)
    x0_hat = x0_from_output(parameterisation, out_mean, x_t, abar)
    return vlb_term_x0(schedule, x0, x_t, t, x0_hat, model_log_variance(schedule, (v + 1) / 2, t))


def fixed_log_variance(schedule: DiscreteSchedule, t: torch.Tensor, like: torch.Tensor, kind: str = "small"):
    """log sigma_t^2 of a fixed-variance reverse process (Ho et al. 2020, section 3.2), shaped like ``like``.

    ``small``: beta~_t (the posterior's, clipped at t = 0 as above); ``large``: beta_t, with beta~_1 at
    t = 0 as Ho et al.'s code does (the decoder's variance is never beta_1). t (B,) int64 index.
    """
    log_beta_tilde, log_beta = posterior_log_variance_table(schedule)
    if kind == "small":
        table = log_beta_tilde
    elif kind == "large":
        table = torch.cat([log_beta_tilde[:1], log_beta[1:]])
    else:
        raise ValueError(f"unknown fixed variance {kind!r}; valid: small, large")
    return _take(table, t, like).expand_as(like)


def gaussian_nll(x0: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """-log N(x0; mean, e^logvar), elementwise, in nats: the decoder of continuous data (latents)."""
    return 0.5 * (math.log(2 * math.pi) + logvar + (x0 - mean) ** 2 * torch.exp(-logvar))


def vlb_term_x0(schedule: DiscreteSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                x0_hat: torch.Tensor, logvar_theta: torch.Tensor, discretized: bool = True) -> torch.Tensor:
    """L_t of the variational bound per sample from the model's x0 prediction, bits/dim, (B,).

    Ho et al. 2020 eq. 5: t > 0: KL(q(x_{t-1}|x_t,x0) || N(mu~(x0_hat, x_t), e^logvar_theta));
    t = 0: the decoder NLL -log p(x0|x1) with mean x0_hat (eq. 13 when ``discretized``, for 8-bit data
    in [-1, 1]; else the continuous Gaussian density). x0, x_t, x0_hat, logvar_theta (B, ...), t (B,).
    """
    mean_theta = posterior_mean(schedule, x0_hat, x_t, t)
    mean_q = posterior_mean(schedule, x0, x_t, t)
    logvar_q = _take(posterior_log_variance_table(schedule)[0], t, x_t)
    dims = tuple(range(1, x0.ndim))
    kl = gaussian_kl(mean_q, logvar_q, mean_theta, logvar_theta).mean(dim=dims)
    decoder = discretized_gaussian_nll if discretized else gaussian_nll
    nll = decoder(x0, mean_theta, logvar_theta).mean(dim=dims)
    return torch.where(t == 0, nll, kl) / math.log(2.0)


def prior_kl(schedule: DiscreteSchedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T|x0) || N(0, I)) per sample, bits/dim, (B,): the prior term of Ho et al. 2020 eq. 5."""
    abar_T = schedule.alpha_bar[-1].to(x0.dtype)
    mean, logvar = abar_T.sqrt() * x0, torch.log1p(-abar_T).expand_as(x0)
    kl = gaussian_kl(mean, logvar, torch.zeros_like(x0), torch.zeros_like(x0))
    return kl.mean(dim=tuple(range(1, x0.ndim))) / math.log(2.0)
