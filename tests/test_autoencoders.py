"""Autoencoders and latent diffusion: shapes, the KL closed form, the VQ straight-through gradient and
EMA codebook, GAN-term separation, the measured latent scale, the latent cache, and the CLI end to end."""

import json

import pytest
import torch
from PIL import Image

from latentdiff.autoencoders import AutoencoderConfig, DiagonalGaussian, VectorQuantizer, build_autoencoder
from latentdiff.autoencoders.losses import (AutoencoderLossConfig, AutoencoderTraining, EffNetPerceptual,
                                            hinge_d_loss)
from latentdiff.cli.main import main
from latentdiff.config import apply_overrides
from latentdiff.data import DataConfig, build_dataset
from latentdiff.data.latent_cache import LatentDataset, write_latent_cache
from latentdiff.pipelines.autoencoder import autoencoder_for, measure_latent_scale
from latentdiff.presets import get_preset

TINY = AutoencoderConfig(kind="kl", channels=8, channel_mult=(1, 2, 2), norm_groups=4, latent_channels=3,
                         num_codes=16, scale_factor=1.0)


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_encode_decode_shapes(kind):
    ae = build_autoencoder(TINY.replace(kind=kind)).eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    z = ae.encode(x)
    assert z.shape == (2, 3, 8, 8) == (2, *ae.latent_shape)
    assert ae.decode(z).shape == x.shape


def test_kl_term_equals_its_closed_form():
    torch.manual_seed(0)
    mean, logvar = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    q = DiagonalGaussian(mean, logvar)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    ).flatten(1).sum(1)
    torch.testing.assert_close(q.kl(), expected, rtol=1e-5, atol=1e-5)


def _hand_made_quantizer(decay=0.5, restart_threshold=0.0):
    vq = VectorQuantizer(num_codes=2, dim=2, beta=0.25, decay=decay, restart_threshold=restart_threshold, eps=0.0)
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    vq.embed_sum.copy_(vq.codebook)
    vq.cluster_size.fill_(1.0)
    return vq


def test_vq_straight_through_gradient_and_commitment():
    vq = _hand_made_quantizer().eval()
    z_e = torch.tensor([[1.0, 2.0], [9.0, 11.0]]).t().reshape(1, 2, 1, 2).clone().requires_grad_(True)
    z_q, commitment, codes = vq(z_e)
    assert codes.flatten().tolist() == [0, 1]
    torch.testing.assert_close(z_q.detach(), torch.tensor([[0.0, 10.0], [0.0, 10.0]]).reshape(1, 2, 1, 2))
    w = torch.randn_like(z_q)
    (z_q * w).sum().backward(retain_graph=True)
    torch.testing.assert_close(z_e.grad, w)  # the decoder's gradient passes straight through
    z_e.grad = None
    commitment.backward()
    e = torch.tensor([[0.0, 10.0], [0.0, 10.0]]).reshape(1, 2, 1, 2)
    torch.testing.assert_close(z_e.grad, 2 * 0.25 * (z_e.detach() - e) / 4)  # d/dz beta mean (z - sg(e))^2


def test_vq_ema_update_on_a_hand_made_case():
    vq = _hand_made_quantizer(decay=0.5)
    flat = torch.tensor([[1.0, 1.0], [3.0, 1.0], [9.0, 9.0]])
    vq.ema_update(flat, vq.nearest(flat))
    # N = 0.5 * 1 + 0.5 * (2, 1); m = 0.5 * e_old + 0.5 * (sum of assigned vectors)
    torch.testing.assert_close(vq.cluster_size, torch.tensor([1.5, 1.0]))
    torch.testing.assert_close(vq.embed_sum, torch.tensor([[2.0, 1.0], [9.5, 9.5]]))
    torch.testing.assert_close(vq.codebook, torch.tensor([[2.0 / 1.5, 1.0 / 1.5], [9.5, 9.5]]))


def test_vq_restarts_a_dead_code_onto_the_data():
    vq = _hand_made_quantizer(decay=0.5, restart_threshold=0.75)
    flat = torch.tensor([[1.0, 1.0], [2.0, 1.0], [1.0, 2.0]])  # nothing near code 1 at (10, 10)
    vq.ema_update(flat, vq.nearest(flat))  # code 1's count falls to 0.5 < 0.75
    assert any(torch.equal(vq.codebook[1], v) for v in flat)


def test_gan_terms_train_each_player_only_on_its_own_loss():
    torch.manual_seed(0)
    module = AutoencoderTraining(TINY, AutoencoderLossConfig(perceptual_weight=0.0, disc_weight=1.0, disc_start=0))
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    loss, logs = module(x, torch.Generator().manual_seed(0))
    loss.backward()
    got = [p.grad.clone() for p in module.discriminator.parameters()]
    module.zero_grad()
    x_hat = module.autoencoder.regularised(x, torch.Generator().manual_seed(0))[0]
    d = module.discriminator
    hinge_d_loss(d(x), d(x_hat.detach())).backward()
    for a, p in zip(got, module.discriminator.parameters()):
        torch.testing.assert_close(a, p.grad)
    with torch.no_grad():
        assert logs["d_loss"] == pytest.approx(float(hinge_d_loss(d(x), d(x_hat))), rel=1e-5)


def test_hinge_loss_definition():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-3.0, 0.0, 0.5])
    expected = (0 + 0.5 + 2.0) / 3 + (0 + 1.0 + 1.5) / 3
    assert float(hinge_d_loss(real, fake)) == pytest.approx(expected)


def test_perceptual_distance_is_zero_on_equal_images_and_has_gradients():
    d = EffNetPerceptual(size=32)
    x = (torch.rand(2, 1, 32, 32) * 2 - 1).requires_grad_(True)
    assert torch.allclose(d(x, x.detach().clone()), torch.zeros(2), atol=1e-6)
    d(x, torch.zeros_like(x)).sum().backward()
    assert x.grad.abs().sum() > 0


def test_latent_scale_brings_held_out_latents_to_unit_std():
    torch.manual_seed(0)
    data = DataConfig(name="fmnist", image_size=32)
    ae = build_autoencoder(TINY.replace(scale_factor=None)).eval()
    train = build_dataset(data, "train").get_batch(torch.arange(2000))["x"]
    scale = measure_latent_scale(ae, train)
    ae.cfg = ae.cfg.replace(scale_factor=scale)
    with torch.no_grad():
        z = ae.encode(build_dataset(data, "test").get_batch(torch.arange(2000))["x"])
    assert abs(scale - 1.0) > 0.2  # the raw latents were not already at unit std
    assert abs(float(z.std()) - 1.0) < 0.05


class _Subset:
    def __init__(self, dataset, n):
        self.dataset, self.n, self.num_classes = dataset, n, dataset.num_classes

    def __len__(self):
        return self.n

    def get_batch(self, index):
        return self.dataset.get_batch(index)


def test_latent_cache_equals_encoding_on_the_fly(tmp_path):
    torch.manual_seed(0)
    ae = build_autoencoder(TINY).eval()
    data = _Subset(build_dataset(DataConfig(), "train"), 700)
    with torch.no_grad():
        folder = write_latent_cache(ae.encode, data, tmp_path / "cache", shard_size=300, batch_size=128,
                                    progress=False)
        cache = LatentDataset(folder)
        assert len(cache) == 700 and len(cache.shards) == 3 and cache.channels == 3 and cache.image_size == 8
        index = torch.tensor([699, 0, 301, 300, 5, 650])
        batch = cache.get_batch(index)
        expected = ae.encode(data.get_batch(index)["x"])
    torch.testing.assert_close(batch["x"], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(batch["label"], data.get_batch(index)["label"])


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae")
    main(["train", "--preset", "tiny-vae", "--out", str(out)])
    return out


def test_autoencoder_run_stores_its_measured_scale(vae_run):
    config = json.loads((vae_run / "checkpoint" / "config.json").read_text())
    assert config["task"] == "autoencoder" and config["autoencoder"]["scale_factor"] > 0
    assert (vae_run / "samples").is_dir()


def test_latent_diffusion_trains_samples_and_evaluates_through_the_cli(vae_run, tmp_path):
    ckpt = str(vae_run / "checkpoint")
    out = tmp_path / "ldm"
    main(["train", "--preset", "tiny-ldm", "--out", str(out), "--set", f"autoencoder={ckpt}",
          "--set", "train.max_steps=3"])
    grid = tmp_path / "grid.png"
    main(["sample", str(out / "checkpoint"), "--n", "10", "--steps", "3", "--out", str(grid)])
    assert Image.open(grid).size[0] > 32  # decoded 32x32 images, not 16x16 latents
    report = tmp_path / "ae.json"
    main(["eval", ckpt, "--n", "40", "--json", str(report)])
    numbers = json.loads(report.read_text())
    assert numbers["n_psnr"] == 10000 and numbers["psnr"] > 0 and numbers["fd_floor"] > 0


def test_latent_shape_mismatch_is_a_clear_error(vae_run):
    cfg = apply_overrides(get_preset("tiny-ldm"), [f"autoencoder={vae_run / 'checkpoint'}", "model.in_channels=4"])
    with pytest.raises(ValueError, match=r"\(2, 16, 16\).*\(4, 16, 16\)"):
        autoencoder_for(cfg)


def test_missing_autoencoder_is_a_clear_error(tmp_path):
    cfg = apply_overrides(get_preset("tiny-ldm"), [f"autoencoder={tmp_path / 'nowhere'}"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        autoencoder_for(cfg)


def test_two_process_vq_training_keeps_one_codebook(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(root / "tests" / "dist_vq_script.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for r in range(2):
        res = json.loads((tmp_path / f"result_rank{r}.json").read_text())
        assert res["steps"] == 4 and res["params_equal_rank0"] and res["ema_equal_rank0"], res
