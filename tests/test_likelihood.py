"""Density estimation (issue 26): the PF-ODE likelihood against closed-form mixtures, Hutchinson's
estimator, the variational bound against its closed form on Gaussian data, and `eval nll` end to end."""

import json
import math

import pytest
import torch

from latentdiff.cli.main import main
from latentdiff.eval.gmm import GMM, GMMDenoiser, make_gmm
from latentdiff.eval.likelihood_ode import (bits_per_dim, divergence_exact, divergence_hutchinson, make_probes,
                                            ode_log_likelihood)
from latentdiff.eval.likelihood_vlb import importance_proposal, uniform_proposal, vlb_bits_per_dim, vlb_terms
from latentdiff.objectives.learned_variance import posterior_log_variance_table, prior_kl
from latentdiff.schedules import DiscreteSchedule

SIGMA_MIN, SIGMA_MAX = 0.02, 80.0


def true_logp(gmm: GMM, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """log p_sigma(x) of the mixture convolved with N(0, sigma^2 I), analytically: (B,)."""
    return torch.logsumexp(gmm.log_joint(x, torch.full((x.shape[0],), sigma, dtype=torch.float64)), 1)


def noisy_points(gmm: GMM, n: int, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x0, _ = gmm.sample(n, g)
    return x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("dim", [2, 4, 8, 16])
def test_ode_likelihood_with_exact_divergence_is_the_mixtures_log_density(dim):
    gmm = make_gmm(dim, 4, seed=dim)
    x = noisy_points(gmm, 6, SIGMA_MIN, seed=1)
    rtol = atol = 1e-8
    out = ode_log_likelihood(GMMDenoiser(gmm), x, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, divergence="exact",
                             rtol=rtol, atol=atol, prior_logp=lambda z, s: true_logp(gmm, z, s))
    # Tolerance from the solver's. scipy's RK45 accepts a step when the RMS over the N state components
    # of err_i / (atol + rtol |y_i|) is <= 1, so one component's local error is at most
    # sqrt(N) (atol + rtol max|y|). The log-density component L does not feed back into x; summing the
    # local errors over the n accepted steps (no amplification: the exact prior removes any other error)
    # bounds the global error by n sqrt(N) (atol + rtol max|y|), max|y| the largest state value.
    # |x| grows along the ODE to its largest at sigma_max, |L| to its largest at the end
    y_max = max(float(out["delta"].abs().max()), float(out["x_max"].abs().max()), float(x.abs().max()))
    n_state = x.numel() + x.shape[0]
    tol = out["n_steps"] * math.sqrt(n_state) * (atol + rtol * y_max)
    err = (out["logp"] - true_logp(gmm, x, SIGMA_MIN)).abs().max()
    print(f"dim {dim}: error {float(err):.2e}, tolerance {tol:.2e}, {out['n_steps']} steps")
    assert err < tol, (float(err), tol)
    assert tol < 0.05  # the bound is tight enough to catch a wrong constant or prior


def test_hutchinson_divergence_is_unbiased():
    gmm = make_gmm(8, 3, seed=3)
    x = noisy_points(gmm, 4, 0.5, seed=2)

    def g(z):  # the PF-ODE drift in log sigma at sigma = 0.5
        return z - gmm.denoise(z, torch.full((z.shape[0],), 0.5, dtype=torch.float64))

    exact = divergence_exact(g, x)[1]
    M = 4000
    x_rep = x.repeat(M, 1)  # M probes of every point in one vector-Jacobian product
    for kind in ("rademacher", "gaussian"):
        probes = make_probes(tuple(x_rep.shape), 1, kind, torch.Generator().manual_seed(0), torch.float64)
        est = divergence_hutchinson(g, x_rep, probes)[1].reshape(M, 4)
        z = (est.mean(0) - exact) / (est.std(0) / math.sqrt(M))
        assert z.abs().max() < 4.5, (kind, z)
    assert exact.abs().min() > 0.1  # a nonzero target, so the check has something to miss


def test_two_probe_seeds_agree_within_their_standard_errors():
    gmm = make_gmm(16, 4, seed=5)
    x = noisy_points(gmm, 6, SIGMA_MIN, seed=3)
    runs = [ode_log_likelihood(GMMDenoiser(gmm), x, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, n_probes=16,
                               rtol=1e-6, atol=1e-6, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    se = [r["logp_probes"].std(0) / math.sqrt(16) for r in runs]
    z = (runs[0]["logp"] - runs[1]["logp"]) / (se[0] ** 2 + se[1] ** 2).sqrt()
    assert z.abs().max() < 4.5, z
    assert (runs[0]["logp"] != runs[1]["logp"]).all()  # the seeds do draw different probes


def _gaussian_closed_forms(schedule: DiscreteSchedule, m: torch.Tensor, s: torch.Tensor, variance: str):
    """E over x0 ~ N(m, diag s^2) and x_t of every term of L_vlb, nats per dim (averaged over dims): (T,), prior.

    The optimal denoiser of Gaussian data is linear, E[x0 | x] = m + s^2/(s^2 + sigma^2)(x - m), with
    error variance v = s^2 sigma^2/(s^2 + sigma^2); the posterior-mean error is c_x0 (x0 - x0_hat), so
    E KL = KL of the variances + c_x0^2 v / (2 var_p); the continuous decoder at t = 0 has mean x0_hat:
    E[-log N(x0; x0_hat, var_p)] = (log(2 pi var_p) + v / var_p) / 2.
    """
    abar, betas = schedule.alpha_bar, schedule.betas
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    c_x0 = abar_prev.sqrt() * betas / (1 - abar)
    log_bt, log_b = posterior_log_variance_table(schedule)
    logvar_q = log_bt
    logvar_p = log_bt if variance == "small" else torch.cat([log_bt[:1], log_b[1:]])
    sig2 = schedule.sigmas[:, None] ** 2
    v = s[None] ** 2 * sig2 / (s[None] ** 2 + sig2)  # (T, D)
    kl = 0.5 * (logvar_p - logvar_q + (logvar_q - logvar_p).exp() - 1)[:, None] + \
        c_x0[:, None] ** 2 * v / (2 * logvar_p.exp()[:, None])
    dec = 0.5 * (math.log(2 * math.pi) + logvar_p[0] + v[0] / logvar_p[0].exp())
    terms = torch.cat([dec[None], kl[1:]]).mean(1)
    aT = abar[-1]
    prior = (0.5 * (-torch.log1p(-aT) + (1 - aT) + aT * (m**2 + s**2) - 1)).mean()
    return terms, prior


@pytest.mark.parametrize("variance", ["small", "large"])
def test_variational_bound_terms_equal_their_closed_forms_on_gaussian_data(variance):
    T, D, n = 20, 3, 20000
    schedule = DiscreteSchedule("linear", T, betas=torch.linspace(1e-3, 0.3, T, dtype=torch.float64))
    gmm = make_gmm(D, 1, seed=7)
    m, s = gmm.means[0], gmm.stds[0]
    terms, prior = _gaussian_closed_forms(schedule, m, s, variance)
    g = torch.Generator().manual_seed(0)
    x0, _ = gmm.sample(n, g)
    D_star = GMMDenoiser(gmm)
    for i in (0, 1, 5, 12, T - 1):
        noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        L = vlb_terms(D_star, schedule, x0, torch.full((n,), i), noise, variances=(variance,), clip=False,
                      discretized=False)[variance] * math.log(2)
        z = (L.mean() - terms[i]) / (L.std() / math.sqrt(n))
        assert abs(z) < 4.5, (i, float(L.mean()), float(terms[i]))
    L_T = prior_kl(schedule, x0) * math.log(2)
    assert abs(L_T.mean() - prior) < 4.5 * L_T.std() / math.sqrt(n) + 1e-12
    # the whole bound: all T terms summed, and the importance-sampled estimate of the same sum
    closed = (terms.sum() + prior) / math.log(2)
    full = vlb_bits_per_dim(D_star, schedule, x0[:4000], variances=(variance,), clip=False, discretized=False,
                            generator=g)[variance]["total"]
    assert abs(full.mean() - closed) < 4.5 * full.std() / math.sqrt(4000)
    proposal = importance_proposal(D_star, schedule, x0[:256], variance=variance, n_grid=T, clip=False,
                                   discretized=False, generator=g)
    for p in (proposal, uniform_proposal(schedule)):
        est = vlb_bits_per_dim(D_star, schedule, x0, variances=(variance,), proposal=p, clip=False,
                               discretized=False, generator=g)[variance]["total"]
        assert abs(est.mean() - closed) < 4.5 * est.std() / math.sqrt(n)


def test_bits_per_dim_counts_the_pixel_scaling():
    """The 256 bins k / 127.5 - 1 +- 1/255 span [-1 - 1/255, 1 + 1/255], of width 256 / 127.5: the uniform
    density there, log p = -dim log(256 / 127.5), is exactly 8 bits per 8-bit pixel."""
    dim = 10
    logp = torch.tensor([-dim * math.log(256 / 127.5)], dtype=torch.float64)
    assert float(bits_per_dim(logp, dim)) == pytest.approx(8.0, abs=1e-9)
    assert float(bits_per_dim(torch.tensor([-dim * math.log(2.0)]), dim, None)) == pytest.approx(1.0)


def test_the_ode_refuses_a_model_without_a_continuous_sigma():
    with pytest.raises(ValueError, match="continuous noise range"):
        ode_log_likelihood(lambda x, sigma, cond=None: x * 0, torch.zeros(2, 3))


# ----------------------------------------------------------------------------- trained models, CLI


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("nll")
    main(["train", "--preset", "tiny", "--out", str(root / "untrained"), "--set", "train.max_steps=1"])
    main(["train", "--preset", "tiny", "--out", str(root / "trained"), "--set", "train.max_steps=150",
          "--set", "train.checkpoint_every=150", "--set", "train.sample_every=1000", "--set", "train.ema_decay=0.9"])
    return root


def test_the_bound_of_a_trained_model_is_far_better_than_an_untrained_ones(runs):
    from latentdiff.pipelines.likelihood import evaluate_nll

    bpd = {}
    for name in ("untrained", "trained"):
        r = evaluate_nll(runs / name / "checkpoint", ("vlb",), n=200, progress=False)["vlb"]
        bpd[name] = (r["bits_per_dim"], r["stderr"])
    (u, u_se), (t, t_se) = bpd["untrained"], bpd["trained"]
    assert u - t > 1.0 and u - t > 10 * math.hypot(u_se, t_se), bpd


def test_eval_nll_through_the_cli_writes_both_methods(runs, tmp_path, capsys):
    out = tmp_path / "nll.json"
    main(["eval", "nll", str(runs / "trained" / "checkpoint"), "--method", "both", "--n", "16", "--ode-n", "4",
          "--tol", "1e-3", "--probes", "2", "--seed", "3", "--json", str(out)])
    report = json.loads(out.read_text())
    for m, n in (("vlb", 16), ("ode", 4)):
        assert report[m]["n"] == n and math.isfinite(report[m]["bits_per_dim"]) and report[m]["stderr"] > 0
        assert 0 < report[m]["bits_per_dim"] < 20
    assert report["covers"].startswith("pixels")
    assert "bits/dim" in capsys.readouterr().out


def test_eval_nll_ode_on_a_dmd_student_is_a_clear_error(runs, capsys):
    from latentdiff.pipelines.likelihood import evaluate_nll

    main(["train", "--preset", "tiny-dmd", "--out", str(runs / "dmd"), "--set",
          f"teacher={runs / 'trained'}/checkpoint"])
    with pytest.raises(ValueError, match="DMD student.*probability-flow ODE cannot integrate it"):
        evaluate_nll(runs / "dmd" / "checkpoint", ("ode",), n=4, progress=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "nll", str(runs / "dmd" / "checkpoint"), "--method", "ode", "--n", "4"])
    assert exit_info.value.code not in (0, None)
    shown = f"{exit_info.value.code} {capsys.readouterr().err}"  # the CLI's one line, as exit message or on stderr
    assert "probability-flow ODE cannot integrate it" in shown


def test_a_latent_checkpoint_says_its_number_covers_the_latent_only(tmp_path, capsys):
    main(["train", "--preset", "tiny-vae", "--out", str(tmp_path / "vae")])
    main(["train", "--preset", "tiny-ldm", "--out", str(tmp_path / "ldm"), "--set",
          f"autoencoder={tmp_path / 'vae'}/checkpoint"])
    out = tmp_path / "nll.json"
    main(["eval", "nll", str(tmp_path / "ldm" / "checkpoint"), "--method", "both", "--n", "8", "--ode-n", "2",
          "--tol", "1e-3", "--json", str(out)])
    report = json.loads(out.read_text())
    assert "decoder term not included" in report["covers"]
    assert "decoder term not included" in capsys.readouterr().out
    assert math.isfinite(report["vlb"]["bits_per_dim"]) and math.isfinite(report["ode"]["bits_per_dim"])
