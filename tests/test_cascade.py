"""Cascaded super-resolution (issue 18): the SR U-Net's conditioning, noise-conditioning and blur
augmentation, tiling, and the cascade and upscale commands end to end on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch
from PIL import Image

from clirun import run_cli
from latentdiff.io.png_meta import parse_parameters, read_png_parameters
from latentdiff.cli.main import main
from latentdiff.data import DataConfig, build_dataset
from latentdiff.nn.superres import resample
from latentdiff.nn.unet import UNet, UNetConfig
from latentdiff.objectives.diffusion import DiffusionConfig
from latentdiff.objectives.superres import (SuperResConfig, SuperResLoss, augment, augment_at_level, gaussian_blur,
                                            noise_augment)
from latentdiff.presets import get_preset
from latentdiff.schedules import DiscreteSchedule, cosine_alpha_bar


def sr_unet(image_size: int = 32, channels: int = 3, patch_size: int = 1, seed: int = 0) -> UNet:
    """A tiny SR U-Net whose zero-initialised output conv is re-drawn, so that its output depends
    on every input (a fresh U-Net outputs zeros whatever it is given)."""
    torch.manual_seed(seed)
    net = UNet(UNetConfig(image_size=image_size, in_channels=channels, channels=8, channel_mult=(1, 2),
                          num_res_blocks=1, attention_resolutions=(), norm_groups=4, patch_size=patch_size,
                          low_res_channels=channels, dropout=0.0))
    for p in net.parameters():  # zero-initialised residual branches and output: drawn at random
        if p.ndim > 1 and not p.detach().any():
            torch.nn.init.normal_(p, std=0.05)
    return net.eval()


def test_aug_level_zero_gives_the_clean_upsampled_low_res_input():
    low = torch.rand(2, 3, 16, 16) * 2 - 1
    shared = augment_at_level(low, 0.0, seed=0)
    assert torch.equal(shared["low_res"], low) and torch.equal(shared["aug_level"], torch.zeros(2))
    net, seen = sr_unet(), {}
    net.conv_in.register_forward_hook(lambda m, inputs, out: seen.update(x=inputs[0]))
    x = torch.randn(2, 3, 32, 32)
    net(x, torch.tensor([10.0, 500.0]), **shared)
    assert torch.equal(seen["x"][:, :3], x)
    pil = [np.asarray(Image.fromarray(c.numpy(), "F").resize((32, 32), Image.BICUBIC)) for c in low.flatten(0, 1)]
    upsampled = torch.from_numpy(np.stack(pil)).view(2, 3, 32, 32)
    torch.testing.assert_close(seen["x"][:, 3:], upsampled, rtol=0, atol=1e-5)  # PIL's bicubic upsampling


@pytest.mark.parametrize("factor,patch", [(2, 1), (4, 1), (2, 2), (4, 2)])
def test_sr_output_has_the_target_size_and_channels(factor, patch):
    for channels in (1, 3):
        net = sr_unet(32, channels, patch)
        low = torch.randn(3, channels, 32 // factor, 32 // factor)
        out = net(torch.randn(3, channels, 32, 32), torch.full((3,), 100.0), low_res=low, aug_level=torch.rand(3))
        assert out.shape == (3, channels, 32, 32)
        loss, _ = SuperResLoss(DiffusionConfig(), SuperResConfig(factor=factor))(
            net, {"x": torch.rand(3, channels, 32, 32) * 2 - 1}, torch.Generator().manual_seed(0))
        assert torch.isfinite(loss)


def test_the_aug_level_embedding_changes_the_output():
    net = sr_unet()
    x, t, low = torch.randn(2, 3, 32, 32), torch.full((2,), 300.0), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a = net(x, t, low_res=low, aug_level=torch.zeros(2))
        b = net(x, t, low_res=low, aug_level=torch.full((2,), 0.3))  # the same low-res input: only the level differs
    assert (a - b).abs().mean() > 1e-3 * a.abs().mean()
    assert torch.equal(a, net(x, t, low_res=low))  # no level given: level 0


def test_the_top_aug_level_makes_the_low_res_input_pure_noise():
    eps = torch.randn(4000, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for image in (torch.ones(4000, 3, 8, 8), -torch.ones(4000, 3, 8, 8)):
        z = noise_augment(image, torch.ones(4000, dtype=torch.float64), eps)
        assert torch.equal(z, eps)  # alpha_bar(1) = 0 exactly: nothing of the image is left
        assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    levels = augment(torch.zeros(20000, 1, 1, 1), SuperResConfig(max_aug_level=1.0), torch.Generator().manual_seed(1))[1]
    assert 0 <= float(levels.min()) and float(levels.max()) <= 1 and abs(float(levels.mean()) - 0.5) < 0.01


def test_noise_augmentation_is_the_cosine_forward_diffusion():
    sched = DiscreteSchedule("cosine", 1000)
    u = torch.tensor([0.0, 0.1, 0.5, 0.9], dtype=torch.float64)
    table = torch.cat([torch.ones(1, dtype=torch.float64), sched.alpha_bar.double()])[(u * 1000).long()]
    torch.testing.assert_close(cosine_alpha_bar(u), table, rtol=1e-9, atol=1e-12)  # telescoping product
    y, eps, s = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4), torch.full((8,), 0.5, dtype=torch.float64)
    a = float(cosine_alpha_bar(torch.tensor(0.5, dtype=torch.float64)))
    torch.testing.assert_close(noise_augment(y, s, eps), a ** 0.5 * y + (1 - a) ** 0.5 * eps)


def test_gaussian_blur_equals_scipy_and_keeps_constants():
    image = torch.rand(2, 3, 12, 12)
    sigma = torch.tensor([0.5, 0.5])
    blurred = gaussian_blur(image, sigma)
    expected = scipy.ndimage.gaussian_filter(image.numpy(), sigma=(0, 0, 0.5, 0.5), mode="mirror", truncate=4.0)
    np.testing.assert_allclose(blurred.numpy(), expected, atol=1e-6)
    const = torch.full((1, 3, 8, 8), 0.25)
    torch.testing.assert_close(gaussian_blur(const, torch.tensor([0.6])), const)
    _, level = augment(image, SuperResConfig(augment="blur"), torch.Generator().manual_seed(0))
    assert torch.equal(level, torch.zeros(2))  # blur is not an aug level


def test_a_base_model_dataset_is_the_antialiased_downsample_of_the_full_size_one():
    full = build_dataset(DataConfig(name="shapes", image_size=64, channels=3, n=16), "test")
    small = build_dataset(DataConfig(name="shapes", image_size=32, channels=3, n=16, source_size=64), "test")
    expected = resample(full.images.float(), 32).round().clamp(0, 255)
    assert torch.equal(small.images.float(), expected) and small.captions == full.captions
    assert small.cache_key != full.cache_key


def test_photo_crops_keep_their_test_photos_out_of_training():
    from latentdiff.data.photos import PHOTOS

    assert not set(PHOTOS["train"]) & set(PHOTOS["test"])
    crops = build_dataset(DataConfig(name="photos", image_size=32, channels=3, n=8), "test")
    again = build_dataset(DataConfig(name="photos", image_size=32, channels=3, n=8), "test")
    assert crops.get_batch(torch.arange(8))["x"].shape == (8, 3, 32, 32) and torch.equal(crops.images, again.images)


def test_sr_configs_refuse_what_cannot_work():
    cfg = get_preset("tiny-sr")
    with pytest.raises(ValueError, match="low_res_channels"):
        cfg.replace(model=cfg.model.replace(low_res_channels=1))
    with pytest.raises(ValueError, match="without a superres section"):
        cfg.replace(superres=None)
    with pytest.raises(ValueError, match="superres.augment"):
        SuperResConfig(augment="jpeg")


@pytest.fixture(scope="module")
def tiny_cascade(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    main(["train", "--preset", "tiny-t2i", "--out", str(root / "base")])
    main(["train", "--preset", "tiny-sr", "--out", str(root / "sr")])
    return root


def test_the_cascade_samples_through_the_cli(tiny_cascade, tmp_path, capsys):
    base, sr = str(tiny_cascade / "base" / "checkpoint"), str(tiny_cascade / "sr" / "checkpoint")
    out, prefix = tmp_path / "final.png", tmp_path / "stages"
    code, stdout, err = run_cli(capsys, ["sample", base, "--upscaler", sr, "--prompt", "a small red circle in the center",
                                         "--n", "2", "--steps", "2", "--sr-steps", "2", "--aug-level", "0.2",
                                         "--out", str(out), "--stages-out", str(prefix)])
    assert code == 0, err
    assert "64 px" in stdout and (tmp_path / "stages_stage0_32px.png").exists()
    assert (tmp_path / "stages_stage1_64px.png").exists() and out.exists()
    fields = parse_parameters(read_png_parameters(out.read_bytes())[0])  # the PNG says what made it
    assert (fields["prompt"], fields["seed"], fields["size"]) == ("a small red circle in the center", 0, "64x64")
    # a stage whose input size is not the base's output: refused, naming both sizes
    code, _, err = run_cli(capsys, ["sample", sr, "--upscaler", sr, "--n", "1", "--out", str(tmp_path / "x.png")])
    assert code == 1 and "upscales 32x32" in err and "gives 64x64" in err
    code, _, err = run_cli(capsys, ["sample", base, "--upscaler", sr, "--aug-level", "1.5", "--out", str(out)])
    assert code == 1 and "--aug-level must be in [0, 1]" in err


def test_upscale_takes_a_user_image_of_any_size(tiny_cascade, tmp_path, capsys):
    sr = str(tiny_cascade / "sr" / "checkpoint")
    grey = tmp_path / "odd.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (27, 45), dtype=np.uint8), "L").save(grey)
    out = tmp_path / "big.png"
    code, stdout, err = run_cli(capsys, ["upscale", sr, str(grey), "--out", str(out), "--steps", "2"])
    assert code == 0, err
    assert Image.open(out).size == (90, 54) and Image.open(out).mode == "RGB"
    assert "converted to RGB" in err and "padded to 32x45" in err and "tiled into 2 tiles" in err
    code, _, err = run_cli(capsys, ["upscale", sr, str(tmp_path / "missing.png"), "--out", str(out)])
    assert code == 1 and "missing.png" in err


def test_tiling_one_tile_is_the_plain_upscale(tiny_cascade):
    from latentdiff.pipelines.cascade import load_upscaler, upscale, upscale_image

    stage = load_upscaler(tiny_cascade / "sr" / "checkpoint", steps=2)
    low = torch.rand(1, 3, 32, 32) * 2 - 1
    plain = upscale(stage, low, ["a large blue square in the top left"], seed=4)
    tiled, note = upscale_image(stage, low, "a large blue square in the top left", seed=4)
    assert "tile" not in note
    torch.testing.assert_close(tiled, plain, rtol=0, atol=1e-5)
