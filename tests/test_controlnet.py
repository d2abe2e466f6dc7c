"""ControlNet: exact base output at initialisation (zero convolutions), gradients only in the ControlNet,
several ControlNets and their scales, the step window, control maps and fidelity metrics, bad control
input, the base check, and the tiny run through the CLI (train, save/load, sample, eval control)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from latentdiff.cli.main import main
from clirun import train_tiny_t2i_and_controlnet
from latentdiff.data.control import ControlConfig, control_maps
from latentdiff.data.shapes import Obj, draw
from latentdiff.eval.control import edge_f1, mask_iou
from latentdiff.io.checkpoint import load_checkpoint
from latentdiff.nn.controlnet import ControlledUNet, ControlNet, ControlNetConfig, guess_mode_weights
from latentdiff.nn.unet import UNet, UNetConfig
from latentdiff.objectives.diffusion import DiffusionConfig, DiffusionLoss
from latentdiff.pipelines.controlnet import load_controlled, load_controlnet, prepare_control
from latentdiff.pipelines.conditions import Conditioning
from latentdiff.pipelines.diffusion import generate
from latentdiff.precond import Denoiser
from latentdiff.sampling import control_sigma_window
from latentdiff.schedules import DiscreteSchedule, sigma_grid

UNET = UNetConfig(image_size=16, in_channels=3, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(8,), norm_groups=4, dropout=0.0, num_classes=3, context_dim=12,
                  pooled_dim=12, patch_size=2)
CN = ControlNetConfig(control_channels=1, control_size=32, hint_channels=4)


def _randomised(module: torch.nn.Module, seed: int, std: float = 0.1) -> torch.nn.Module:
    """Every weight redrawn, zero-initialised ones included (a stand-in for trained weights)."""
    torch.manual_seed(seed)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=std)
    return module


def _inputs(b: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cond = {"class_labels": torch.tensor([0, 2, 3])[:b], "text": torch.randn(b, 5, 12, generator=g),
            "text_mask": torch.rand(b, 5, generator=g) > 0.3, "pooled": torch.randn(b, 12, generator=g)}
    control = (torch.rand(b, 1, 32, 32, generator=g) > 0.8).float()
    return torch.randn(b, 3, 16, 16, generator=g), torch.rand(b, generator=g) * 999, cond, control


@pytest.fixture(scope="module")
def unet():
    return _randomised(UNet(UNET), 0).eval()


def test_at_initialisation_the_controlled_model_is_exactly_the_base(unet):
    controlnet = ControlNet.from_unet(unet, CN)
    x, t, cond, control = _inputs()
    with torch.no_grad():
        base = unet(x, t, **cond)
        controlled = ControlledUNet(unet, [controlnet])(x, t, control=control, **cond)
        residuals = controlnet(x, t, control, **cond)
    assert torch.equal(controlled, base)
    assert len(residuals) == len(unet.skip_channels) + 1 and all(not r.any() for r in residuals)
    copied = {k: v for k, v in controlnet.state_dict().items() if not k.startswith(("hint.", "zero_"))}
    assert all(torch.equal(v, unet.state_dict()[k]) for k, v in copied.items())


def test_gradients_reach_the_controlnet_and_not_the_base(unet):
    base_before = {k: v.clone() for k, v in unet.state_dict().items()}
    unet.requires_grad_(False)
    controlnet = ControlNet.from_unet(unet, CN)
    loss_fn = DiffusionLoss(DiffusionConfig(schedule="cosine", parameterisation="v", cond_drop_prob=0.5),
                            num_classes=3)
    x0, _, cond, control = _inputs()
    batch = {"x": x0, "label": cond["class_labels"], "text": cond["text"], "text_mask": cond["text_mask"],
             "pooled": cond["pooled"], "control": control}
    optimizer = torch.optim.SGD(controlnet.parameters(), lr=0.5)
    # Step 0: only the zero convolutions get gradients; step 1: the copy and the hint encoder's last
    # (zero) convolution; step 2: the whole hint encoder too.
    for step in range(3):
        optimizer.zero_grad()
        loss, _ = loss_fn(ControlledUNet(unet, [controlnet]), batch, torch.Generator().manual_seed(step))
        loss.backward()
        optimizer.step()
    assert all(p.grad is None for p in unet.parameters())
    for name in ("zero_middle.weight", "zero_convs.0.weight", "hint.net.0.weight", "conv_in.weight",
                 "down.0.0.conv1.weight", "middle.0.conv1.weight"):
        assert controlnet.get_parameter(name).grad.abs().sum() > 0, name
    assert all(torch.equal(v, base_before[k]) for k, v in unet.state_dict().items())


def test_several_controlnets_sum_their_scaled_residuals_and_scale_0_is_none(unet):
    a, b = (_randomised(ControlNet.from_unet(unet, CN), seed) for seed in (1, 2))
    x, t, cond, control = _inputs()
    both = ControlledUNet(unet, [a, b])
    two = torch.cat([control, control.flip(-1)], 1)
    with torch.no_grad():
        base = unet(x, t, **cond)
        assert torch.equal(both(x, t, control=two, control_scale=torch.zeros(3, 2), **cond), base)
        assert not torch.allclose(both(x, t, control=two, **cond), base)
        ra, rb = a(x, t, control, **cond), b(x, t, control.flip(-1), **cond)
        expected = unet(x, t, residuals=[0.7 * p + 0.2 * q for p, q in zip(ra, rb)], **cond)
        mixed = both(x, t, control=two, control_scale=torch.tensor([[0.7, 0.2]]).expand(3, 2), **cond)
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="channels"):
        both(x, t, control=control, **cond)


def test_guess_mode_weights_grow_with_depth_to_one():
    w = guess_mode_weights(13)
    assert w[-1] == 1.0 and w[0] == pytest.approx(0.825 ** 12) and w == sorted(w)


def test_control_applies_only_within_the_chosen_steps(unet):
    sigmas = sigma_grid(DiscreteSchedule("cosine"), 10, "karras")
    assert control_sigma_window(sigmas, 0.0, 1.0) == (float(sigmas[9]), float(sigmas[0]))
    assert control_sigma_window(sigmas, 0.2, 0.5) == (float(sigmas[4]), float(sigmas[2]))
    lo, hi = control_sigma_window(sigmas, 0.5, 0.5)
    assert lo > hi  # no step at all
    controlnet = _randomised(ControlNet.from_unet(unet, CN), 3)
    denoiser = Denoiser(ControlledUNet(unet, [controlnet]), DiscreteSchedule("cosine"), "v")
    _, _, _, control = _inputs(b=2)
    cond, run = Conditioning(class_labels=torch.tensor([0, 1]), control=control), dict(steps=4, seed=1)
    off = generate(denoiser, 2, cond.replace(control_scale=(0.0,)), **run)
    torch.testing.assert_close(generate(denoiser, 2, cond.replace(control_steps=(0.5, 0.5)), **run), off, rtol=0, atol=0)
    late = generate(denoiser, 2, cond.replace(control_steps=(0.5, 1.0)), **run)
    full = generate(denoiser, 2, cond, **run)
    assert not torch.allclose(late, off) and not torch.allclose(late, full)


def test_edge_f1_and_mask_iou_match_hand_counts():
    square = torch.zeros(1, 1, 16, 16)
    square[..., 4:12, 4:12] = 1
    outline = square - torch.nn.functional.pad(square[..., 5:11, 5:11], (5, 5, 5, 5))
    assert edge_f1(outline, outline)["f1"].item() == 1.0
    shifted = outline.roll(1, dims=-1)
    assert edge_f1(shifted, outline, tolerance=1)["f1"].item() == 1.0
    strict = edge_f1(shifted, outline, tolerance=0)
    assert strict["precision"].item() == pytest.approx(14 / 28)  # the two vertical sides moved off, 7 + 7 pixels
    assert edge_f1(torch.zeros_like(outline), outline)["f1"].item() == 0.0
    assert edge_f1(torch.zeros_like(outline), torch.zeros_like(outline))["f1"].item() == 1.0
    assert mask_iou(square, square.roll(4, dims=-1)).item() == pytest.approx(32 / 96)


def test_control_maps_read_shapes_outlines_and_silhouettes():
    objs = [Obj("square", "blue", "large", 1, 1)]
    image = draw(objs, 32, np.random.default_rng(0), textured=True)
    plain = draw(objs, 32, np.random.default_rng(0), textured=False)
    truth = torch.from_numpy((plain != plain[0, 0]).any(-1))[None, None]
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None]
    mask = control_maps(pixels, ControlConfig(kind="mask"))
    assert mask.shape == (1, 1, 32, 32) and mask_iou(mask, truth).item() == 1.0
    edges = control_maps(pixels, ControlConfig(kind="edges", sigma=1.0, low=0.3, high=0.6))
    boundary = truth.float() - torch.nn.functional.max_pool2d(-truth.float(), 3, 1, 1).neg()
    assert edge_f1(edges, boundary.abs(), tolerance=1)["f1"].item() > 0.9  # stripes ignored


def test_bad_control_input_is_resized_converted_or_refused(capsys, unet):
    rgb = torch.rand(1, 3, 20, 24)
    out = prepare_control(rgb, CN, name="edges.png")
    assert out.shape == (1, 1, 32, 32)
    assert "edges.png is (20, 24); resized to 32x32" in capsys.readouterr().err
    rgb = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(prepare_control(rgb, CN), rgb.mean(1, keepdim=True))
    grey_alpha = torch.rand(1, 2, 32, 32)
    assert torch.equal(prepare_control(grey_alpha, CN), grey_alpha[:, :1])
    with pytest.raises(ValueError, match="5 channels; this ControlNet reads 1"):
        prepare_control(torch.rand(1, 5, 32, 32), CN)
    with pytest.raises(ValueError, match=r"(?s)made from a U-Net with config.*channels=8.*base U-Net.*channels=16"):
        ControlNet.from_unet(unet, CN).check_base(UNET.replace(channels=16))


@pytest.fixture(scope="module")
def controlnet_run(tmp_path_factory):
    return train_tiny_t2i_and_controlnet(tmp_path_factory.mktemp("controlnet"))


def test_the_controlnet_run_trains_saves_and_loads(controlnet_run):
    base_state = load_checkpoint(controlnet_run / "base" / "checkpoint")
    net, cfg = load_controlnet(controlnet_run / "cn" / "checkpoint", use_ema=False)
    saved = load_checkpoint(controlnet_run / "cn" / "checkpoint")
    assert cfg.base_model is not None and cfg.base_model.context_dim == 384
    assert all(torch.equal(v, saved.model_state[k]) for k, v in net.state_dict().items())
    assert not any(k.startswith("up.") for k in saved.model_state)  # only the encoder copy is saved
    assert any(saved.model_state[k].abs().sum() > 0 for k in saved.model_state if k.startswith("zero_"))
    denoiser, *_ = load_controlled(None, [controlnet_run / "cn" / "checkpoint"])
    assert all(torch.equal(v, base_state.ema_state[k]) for k, v in denoiser.net.unet.state_dict().items())


def test_sample_and_eval_control_through_the_cli(controlnet_run, tmp_path):
    base, cn = str(controlnet_run / "base" / "checkpoint"), str(controlnet_run / "cn" / "checkpoint")
    control = tmp_path / "edges.png"
    Image.fromarray((np.random.default_rng(0).random((24, 24)) > 0.8).astype(np.uint8) * 255).save(control)
    out = tmp_path / "controlled.png"
    main(["sample", base, "--controlnet", cn, "--controlnet", cn, "--control", str(control), "--control", str(control),
          "--control-scale", "1.0", "--control-scale", "0.5", "--prompt", "a small red circle in the center",
          "--n", "2", "--steps", "3", "--control-start", "0.0", "--control-end", "0.5", "--out", str(out)])
    assert out.exists()
    main(["sample", cn, "--control", str(control), "--guess-mode", "--n", "2", "--steps", "3",
          "--out", str(tmp_path / "guess.png")])
    report_path, figure = tmp_path / "control.json", tmp_path / "control.png"
    main(["eval", "control", base, "--controlnet", cn, "--n", "8", "--seed", "3", "--steps", "3",
          "--json", str(report_path), "--png", str(figure)])
    report = json.loads(report_path.read_text())
    for name in ("with_control", "without_control"):
        assert 0.0 <= report[name]["edge_f1"] <= 1.0 and report[name]["n_eval"] == 8
    assert figure.exists()
    with pytest.raises(SystemExit, match="need as many --control"):
        main(["sample", base, "--controlnet", cn, "--out", str(tmp_path / "x.png")])


def test_a_controlnet_from_another_base_is_refused(controlnet_run, tmp_path):
    other = tmp_path / "other"
    main(["train", "--preset", "tiny-t2i", "--out", str(other), "--set", "model.channels=16",
          "--set", "train.max_steps=1"])
    with pytest.raises(SystemExit, match="does not fit base"):
        main(["eval", "control", str(other / "checkpoint"), "--controlnet", str(controlnet_run / "cn" / "checkpoint"),
              "--n", "4", "--steps", "2"])
