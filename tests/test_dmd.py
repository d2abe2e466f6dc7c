"""DMD / DMD2 (objectives/dmd.py, pipelines/dmd.py): the generator starts as the teacher's one-step x0
prediction, the distribution-matching gradient is zero when the fake score equals the real one and
the surrogate loss has exactly that gradient, the regression pairs reproduce the teacher's sampler,
backward simulation is the consistency sampler, the two time-scale rule, and the training run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latentdiff.cli.main import main
from latentdiff.io.checkpoint import load_checkpoint
from latentdiff.nn.unet import UNet
from latentdiff.objectives.dmd import (DistributionMatching, DMDConfig, distribution_matching_grad,
                                       distribution_matching_loss, frozen, sample_noise_level)
from latentdiff.pipelines import Conditioning, generate, load_model
from latentdiff.pipelines.diffusion import make_denoiser
from latentdiff.pipelines.dmd import check_teacher, load_student, make_pairs
from latentdiff.presets import PairsConfig, get_preset
from latentdiff.sampling import CFGDenoiser, get_sampler
from latentdiff.schedules import sigma_grid


@pytest.fixture(scope="module")
def tiny():
    """A tiny class-conditional v-prediction teacher (RunConfig, Denoiser) with random, non-zero weights."""
    cfg = get_preset("tiny")
    cfg = cfg.replace(model=cfg.model.replace(image_size=8), data=cfg.data.replace(image_size=8))
    torch.manual_seed(0)
    net = UNet(cfg.model).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return cfg, make_denoiser(net, cfg).requires_grad_(False)


def _dmd(tiny, **changes) -> DistributionMatching:
    cfg, teacher = tiny
    return DistributionMatching(teacher, DMDConfig(regression_weight=0.0, **changes), cfg.diffusion, 10)


def test_the_generator_starts_as_the_teachers_one_step_prediction(tiny):
    cfg, teacher = tiny
    dmd = _dmd(tiny)
    z, cond = torch.randn(4, 1, 8, 8), {"class_labels": torch.tensor([0, 1, 2, 3])}
    sigma_max = teacher.sigma_max
    expected = teacher((1 + sigma_max ** 2) ** 0.5 * z, torch.full((4,), sigma_max), cond)
    assert torch.equal(dmd.generate(z, cond, torch.Generator(), step=0), expected)
    assert all(p.requires_grad for p in dmd.generator.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())  # the teacher stays frozen
    # one step of the consistency sampler from generate()'s noise is G(z) for the same seed
    one_step = generate(dmd.generator, 4, Conditioning(class_labels=cond["class_labels"]), sampler="consistency",
                        steps=1, spacing="trailing", seed=7)
    z7 = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(one_step, dmd.generate(z7, cond, torch.Generator(), step=0).clamp(-1, 1))


def test_the_dm_gradient_is_zero_when_fake_equals_real(tiny):
    _, teacher = tiny
    dmd = _dmd(tiny)
    g = torch.Generator().manual_seed(0)
    cond = {"class_labels": torch.tensor([0, 1, 2, 3])}
    z = torch.randn(4, 1, 8, 8, generator=g)
    sigma = sample_noise_level(teacher, 4, g)
    assert ((sigma >= teacher.schedule.t_to_sigma(torch.tensor([20.0])).float() - 1e-6)
            & (sigma <= teacher.sigma_max)).all()
    for real, fake in ((teacher, dmd.fake),  # the fake score's copy, and both guided alike
                       (CFGDenoiser(teacher, 2.0, {"class_labels": torch.full((4,), 10)}),
                        CFGDenoiser(dmd.fake, 2.0, {"class_labels": torch.full((4,), 10)}))):
        x = dmd.generate(z, cond, g, step=0)
        loss, logs = distribution_matching_loss(x, real, fake, cond, sigma, torch.randn(x.shape, generator=g))
        loss.backward()
        assert loss.item() == 0.0 and logs["dm_grad_norm"] == 0.0
        assert all(p.grad is None or not p.grad.any() for p in dmd.generator.parameters())


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


def test_the_regression_pairs_reproduce_the_teachers_sampler(tiny):
    cfg, teacher = tiny
    pairs = make_pairs(teacher, cfg, PairsConfig(n=6, sampler="ddim", steps=4, spacing="trailing", seed=3),
                       guidance=2.0, progress=False)
    labels = torch.arange(6) % 10
    assert torch.equal(pairs.tensors["label"], labels)
    assert torch.equal(pairs.tensors["z"], torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(3)))
    expected = generate(teacher, 6, Conditioning(class_labels=labels), sampler="ddim", steps=4, spacing="trailing",
                        guidance=2.0, seed=3)
    assert torch.equal(pairs.tensors["x"], expected)
    # and the sampler run by hand from the stored noise gives the same images
    sigmas = sigma_grid(teacher.schedule, 4, "trailing")
    guided = CFGDenoiser(teacher, 2.0, {"class_labels": torch.full((6,), 10)})
    by_hand = get_sampler("ddim")(guided, pairs.tensors["z"] * (1 + float(sigmas[0]) ** 2) ** 0.5, sigmas,
                                  cond={"class_labels": labels})
    assert torch.equal(pairs.tensors["x"], by_hand.clamp(-1, 1))


def test_backward_simulation_is_the_consistency_sampler(tiny):
    _, teacher = tiny
    dmd = _dmd(tiny, student_steps=2)
    z, cond = torch.randn(3, 1, 8, 8), {"class_labels": torch.tensor([4, 5, 6])}
    trained_step = dmd.generate(z, cond, torch.Generator().manual_seed(5), step=1)
    sigmas = sigma_grid(teacher.schedule, 2, "trailing")
    sampled = get_sampler("consistency")(dmd.generator, z * (1 + float(sigmas[0]) ** 2) ** 0.5, sigmas, cond=cond,
                                         generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(trained_step, sampled)


def test_two_time_scales_update_the_generator_every_kth_step_and_the_gan_loss_spares_the_critic(tiny):
    dmd = _dmd(tiny, fake_updates=3, gan_weight=1.0, disc_weight=1.0)
    batch = {"x": torch.rand(4, 1, 8, 8) * 2 - 1, "label": torch.tensor([0, 1, 2, 3])}
    g = torch.Generator().manual_seed(0)
    turns = []
    for _ in range(4):
        dmd.zero_grad(set_to_none=True)
        loss, logs = dmd(batch, g)
        loss.backward()
        turns.append(any(p.grad is not None for p in dmd.generator.parameters()))
        assert all(p.grad is not None for p in dmd.head.parameters()) and "fake" in logs and "gan_d" in logs
        assert ("dm" in logs) == turns[-1] and ("gan_g" in logs) == turns[-1]
    assert turns == [True, False, False, True] and int(dmd.updates) == 4
    # the generator's GAN loss trains the generator, not the discriminator it goes through
    dmd.zero_grad(set_to_none=True)
    x = torch.randn(2, dmd.generator.net.width, 4, 4, requires_grad=True)
    with frozen(dmd.head):
        dmd.head(x).sum().backward()
    assert x.grad is not None and all(p.grad is None and p.requires_grad for p in dmd.head.parameters())


def test_a_teacher_of_another_kind_is_refused(tiny):
    cfg, _ = tiny
    dmd_cfg = get_preset("fmnist-dmd")
    with pytest.raises(ValueError, match="eps-prediction model at 8x8.*v-prediction at 32x32"):
        check_teacher(dmd_cfg, cfg.replace(diffusion=cfg.diffusion.replace(parameterisation="eps")))
    check_teacher(dmd_cfg.replace(image_size=8), cfg)


@pytest.fixture(scope="module")
def dmd_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dmd")
    main(["train", "--preset", "tiny", "--out", str(root / "teacher")])
    main(["train", "--preset", "tiny-dmd", "--out", str(root / "dmd"), "--set", f"teacher={root / 'teacher'}/checkpoint"])
    return root


def test_the_dmd_run_trains_saves_and_samples_in_one_step(dmd_run, tmp_path):
    student, _, cfg = load_model(dmd_run / "dmd" / "checkpoint")
    state = load_checkpoint(dmd_run / "dmd" / "checkpoint")
    for name, value in student.net.state_dict().items():
        assert torch.equal(value, state.ema_state["generator.net." + name])
    teacher = load_checkpoint(dmd_run / "teacher" / "checkpoint").ema_state
    assert any(not torch.equal(teacher[k[len("generator.net."):]], v) for k, v in state.model_state.items()
               if k.startswith("generator.net."))  # trained away from the teacher
    assert (cfg.sample.sampler, cfg.sample.steps, cfg.sample.guidance) == ("consistency", 1, 1.0)
    assert json.loads((dmd_run / "dmd" / "pairs.json").read_text())["seconds"] > 0
    main(["sample", str(dmd_run / "dmd" / "checkpoint"), "--steps", "1", "--n", "10", "--out", str(tmp_path / "s.png")])
    assert (tmp_path / "s.png").exists()
    _, _, _, dmd_cfg = load_student(dmd_run / "dmd" / "checkpoint")
    assert dmd_cfg.teacher_config.model == get_preset("tiny").model


def test_a_non_finite_loss_stops_the_run_naming_it_and_keeps_the_checkpoint(dmd_run, monkeypatch):
    from latentdiff.autoencoders.losses import EffNetPerceptual

    out = dmd_run / "dmd"
    before = load_checkpoint(out / "checkpoint").trainer_state["step"]
    monkeypatch.setattr(EffNetPerceptual, "forward", lambda self, a, b: torch.full((len(a),), float("nan")))
    with pytest.raises(SystemExit, match="training diverged at step .*regression"):
        main(["train", "--preset", "tiny-dmd", "--out", str(out), "--set", f"teacher={dmd_run / 'teacher'}/checkpoint",
              "--set", "train.max_steps=12"])
    assert load_checkpoint(out / "checkpoint").trainer_state["step"] == before


def test_dmd2_trains_on_two_processes(dmd_run, tmp_path):
    """DMD2's fake-score-only steps leave the generator without gradients: DDP (2 gloo processes) has
    to be told to look for unused parameters, and then trains the generator every other step."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "latentdiff.cli.main", "train", "--preset", "tiny-dmd2", "--out", str(tmp_path / "dmd2"),
           "--set", f"teacher={dmd_run / 'teacher'}/checkpoint"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = load_checkpoint(tmp_path / "dmd2" / "checkpoint")
    steps = get_preset("tiny-dmd2").train.max_steps
    assert state.trainer_state["step"] == steps and int(state.model_state["updates"]) == steps
    teacher = load_checkpoint(dmd_run / "teacher" / "checkpoint").ema_state
    moved = [k for k, v in teacher.items() if not torch.equal(state.model_state[f"generator.net.{k}"], v)]
    assert moved, "the generator never changed"


def test_text_and_latent_teachers_distil_through_the_cli(tmp_path):
    """DMD of a text-to-image teacher (pairs drawn from training captions) and DMD2 of a latent
    teacher (the student samples latents, decoded), then 1- and k-step sampling from the CLI."""
    main(["train", "--preset", "tiny-t2i", "--out", str(tmp_path / "t2i")])
    main(["train", "--preset", "tiny-dmd", "--out", str(tmp_path / "t2i-dmd"), "--set",
          f"teacher={tmp_path / 't2i'}/checkpoint"])
    main(["sample", str(tmp_path / "t2i-dmd" / "checkpoint"), "--steps", "1", "--prompt", "a small red circle",
          "--n", "2", "--out", str(tmp_path / "t2i.png")])
    main(["train", "--preset", "tiny-vae", "--out", str(tmp_path / "vae")])
    main(["train", "--preset", "tiny-ldm", "--out", str(tmp_path / "ldm"), "--set", f"autoencoder={tmp_path / 'vae'}/checkpoint"])
    main(["train", "--preset", "tiny-dmd2", "--out", str(tmp_path / "ldm-dmd2"), "--set",
          f"teacher={tmp_path / 'ldm'}/checkpoint", "--set", "image_size=16"])
    student, autoencoder, cfg = load_model(tmp_path / "ldm-dmd2" / "checkpoint")
    for steps in (1, 2):
        images = generate(student, 4, Conditioning(class_labels=torch.arange(4)), sampler="consistency", steps=steps,
                          spacing="trailing", autoencoder=autoencoder)
        assert images.shape == (4, 1, 32, 32) and images.isfinite().all()
    assert (tmp_path / "t2i.png").exists()
