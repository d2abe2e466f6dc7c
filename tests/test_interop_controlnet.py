"""Parity: diffusers' ControlNetModel in and out of our ControlNet (latentdiff.interop.controlnet). Every
weight is random (fixed seed; the zero convolutions too), so no map is right by accident: the residuals,
the controlled U-Net's output, a folder our code writes loaded by diffusers, identity round trips, and
errors that name the key or option."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import ControlNetModel, UNet2DConditionModel  # noqa: E402
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from sd_fixture import randomise  # noqa: E402

from latentdiff.interop.controlnet import (controlnet_from_diffusers, controlnet_from_ldm,  # noqa: E402
                                           controlnet_to_diffusers, controlnet_to_ldm)
from latentdiff.interop.keys import LayoutError  # noqa: E402
from latentdiff.interop.unet import unet_from_diffusers  # noqa: E402
from latentdiff.nn.controlnet import ControlledUNet, ControlNet, ControlNetConfig, guess_mode_weights  # noqa: E402
from latentdiff.nn.unet import UNet, UNetConfig  # noqa: E402

TOL = 1e-5
SIZE = 8  # latent side; the control is 8x that (three stride-2 steps in the condition embedding)
SD_STYLE = dict(in_channels=4, block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                layers_per_block=1, cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
EXPORTABLE = UNetConfig(image_size=SIZE, in_channels=4, channels=16, channel_mult=(1, 2), num_res_blocks=2,
                        attention_resolutions=(SIZE, SIZE // 2), num_heads=None, head_dim=8, dropout=0.0,
                        scale_shift_norm=True, norm_groups=8, context_dim=24, transformer=True, null_token=False,
                        transformer_norm_eps=1e-6)


def _reference(seed: int = 0, **kw) -> ControlNetModel:
    return randomise(ControlNetModel(**{**SD_STYLE, "conditioning_embedding_out_channels": (8, 16, 16, 32), **kw}),
                     std=0.03, seed=seed)


def _base() -> tuple[UNet2DConditionModel, UNetConfig, UNet]:
    """A random diffusers SD-style U-Net, its config imported, and ours with its weights."""
    unet = randomise(UNet2DConditionModel(**SD_STYLE, sample_size=SIZE, out_channels=4,
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")), std=0.03, seed=5)
    unet_cfg, state = unet_from_diffusers({**unet.config, "_class_name": "UNet2DConditionModel"}, unet.state_dict())
    base = UNet(unet_cfg).eval()
    base.load_state_dict(state, strict=True)
    return unet, unet_cfg, base


def _ours(unet_cfg: UNetConfig, cfg: ControlNetConfig, state: dict) -> ControlNet:
    net = ControlNet(unet_cfg, cfg).eval()
    net.load_state_dict(state, strict=True)
    return net


def _inputs(channels: int = 3, context: int = 32, latent: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, latent, SIZE, SIZE, generator=g)
    return (x, torch.tensor([17.0, 640.0]), torch.randn(2, 5, context, generator=g),
            torch.rand(2, channels, 8 * SIZE, 8 * SIZE, generator=g))


def _max_error(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> float:
    assert len(ours) == len(theirs)
    assert min(float(r.abs().max()) for r in theirs) > 1e-2  # not a comparison of near-zeros
    return max(float((a - b).abs().max()) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("options", [{}, dict(controlnet_conditioning_channel_order="bgr", use_linear_projection=True,
                                              attention_head_dim=(2, 4)),
                                     dict(flip_sin_to_cos=False, freq_shift=1, resnet_time_scale_shift="scale_shift",
                                          conditioning_channels=1, conditioning_embedding_out_channels=(4, 8, 8, 16))])
@torch.no_grad()
def test_residuals_equal_diffusers(options):
    ref = _reference(**options)
    unet_cfg, cfg, state = controlnet_from_diffusers(dict(ref.config), ref.state_dict(), sample_size=SIZE)
    controlled = ControlledUNet(UNet(unet_cfg), [_ours(unet_cfg, cfg, state)])
    x, t, text, control = _inputs(ref.config.conditioning_channels)
    out = ref(x, t, text, control, conditioning_scale=0.7)
    ours = controlled.residuals(x, t, control, torch.full((2, 1), 0.7), {"text": text})
    assert _max_error(ours, [*out.down_block_res_samples, out.mid_block_res_sample]) < TOL


@torch.no_grad()
def test_guess_mode_is_ours_with_diffusers_decay():
    """diffusers' guess mode weighs residual k of n by 10^(-(n-1-k)/(n-1)): our weights with that decay."""
    ref = _reference()
    net = _ours(*controlnet_from_diffusers(dict(ref.config), ref.state_dict(), sample_size=SIZE))
    x, t, text, control = _inputs()
    out = ref(x, t, text, control, guess_mode=True)
    plain = net(x, t, control, text=text)
    n = len(plain)
    ours = [r * w for r, w in zip(plain, guess_mode_weights(n, 10 ** (-1 / (n - 1))))]
    assert _max_error(ours, [*out.down_block_res_samples, out.mid_block_res_sample]) < TOL


@torch.no_grad()
def test_controlled_unet_equals_diffusers_with_two_controlnets():
    unet, unet_cfg, base = _base()
    refs = [_reference(6), _reference(7, conditioning_channels=1)]
    nets = []
    for ref in refs:
        cn_unet_cfg, cfg, state = controlnet_from_diffusers(dict(ref.config), ref.state_dict(), sample_size=SIZE)
        nets.append(_ours(cn_unet_cfg, cfg, state))
        nets[-1].check_base(unet_cfg)  # the imported base is the one the imported ControlNet was made for
    x, t, text, control = _inputs(channels=4)
    scales = (0.8, 1.3)
    outs = [ref(x, t, text, c, conditioning_scale=s) for ref, c, s in zip(refs, control.split([3, 1], 1), scales)]
    down = [a + b for a, b in zip(outs[0].down_block_res_samples, outs[1].down_block_res_samples)]
    expected = unet(x, t, text, down_block_additional_residuals=down,
                    mid_block_additional_residual=outs[0].mid_block_res_sample + outs[1].mid_block_res_sample).sample
    ours = ControlledUNet(base, nets)(x, t, control=control, control_scale=torch.tensor([scales] * 2), text=text)
    assert _max_error([ours], [expected]) < TOL
    assert _max_error([ours], [expected - unet(x, t, text).sample]) > 1e-2  # the residuals mattered


def test_diffusers_from_unet_copies_what_our_from_unet_copies():
    unet, _, base = _base()
    copied = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 32))
    _, cfg, theirs = controlnet_from_diffusers(dict(copied.config), copied.state_dict(), sample_size=SIZE)
    ours = ControlNet.from_unet(base, cfg).state_dict()
    own = ("hint.", "zero_")
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if not k.startswith(own))
    assert all(not theirs[k].any() for k in ours if k.startswith(("zero_", "hint.net.14")))  # zero at the start


@torch.no_grad()
def test_export_loads_in_diffusers_from_a_folder_we_write(tmp_path):
    cfg = ControlNetConfig(control_channels=1, control_size=8 * SIZE, hint_channels=4)  # widths (4, 8, 16, 32)
    net = randomise(ControlNet(EXPORTABLE, cfg), std=0.03, seed=3)
    config, state = controlnet_to_diffusers(EXPORTABLE, cfg, net.state_dict())
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    ref = ControlNetModel.from_pretrained(tmp_path).eval()
    assert list(ref.config.conditioning_embedding_out_channels) == [4, 8, 16, 32]
    x, t, text, control = _inputs(channels=1, context=24)
    out = ref(x, t, text, control, conditioning_scale=1.5)
    ours = [1.5 * r for r in net(x, t, control, text=text)]
    assert _max_error(ours, [*out.down_block_res_samples, out.mid_block_res_sample]) < TOL
    assert set(ControlNetModel.from_config(config).state_dict()) == set(state)


@pytest.mark.parametrize("options", [{}, dict(controlnet_conditioning_channel_order="bgr", freq_shift=1,
                                              flip_sin_to_cos=False)])
def test_import_export_import_is_the_identity(options):
    ref = _reference(**options)
    unet_cfg, cfg, state = controlnet_from_diffusers(dict(ref.config), ref.state_dict(), sample_size=SIZE)
    config, theirs = controlnet_to_diffusers(unet_cfg, cfg, state)
    assert set(theirs) == set(ref.state_dict())
    unet_cfg2, cfg2, state2 = controlnet_from_diffusers(config, theirs, sample_size=SIZE)
    assert (unet_cfg2, cfg2) == (unet_cfg, cfg)
    assert set(state2) == set(state) and all(torch.equal(state[k], state2[k]) for k in state)
    if not options:  # a diffusers-native model comes back tensor for tensor
        assert all(torch.equal(v, theirs[k]) for k, v in ref.state_dict().items())


def test_hint_widths_default_is_the_doubling():
    doubling = ControlNetConfig(control_channels=1, control_size=32, hint_channels=4)
    listed = doubling.replace(hint_widths=(4, 8, 16))
    unet_cfg = UNetConfig(image_size=8, channels=8, channel_mult=(1,), norm_groups=4)
    assert doubling.widths(8) == listed.widths(8) == (4, 8, 16)
    torch.manual_seed(0)
    a = ControlNet(unet_cfg, doubling).state_dict()
    torch.manual_seed(0)
    b = ControlNet(unet_cfg, listed).state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="hint_widths"):
        doubling.replace(hint_widths=(4, 8)).widths(8)


def test_defaults_of_the_shared_options_agree():
    """A ControlNetModel config's missing options are read with UNet2DConditionModel's defaults."""
    from latentdiff.interop.controlnet import _SHARED_KEYS
    cn, unet = (inspect.signature(c.__init__).parameters for c in (ControlNetModel, UNet2DConditionModel))
    assert {k: cn[k].default for k in _SHARED_KEYS} == {k: unet[k].default for k in _SHARED_KEYS}


@pytest.mark.parametrize("change, error, match", [
    (dict(global_pool_conditions=True), ValueError, "global_pool_conditions"),
    (dict(controlnet_conditioning_channel_order="xyz"), ValueError, "controlnet_conditioning_channel_order"),
    (dict(class_embed_type="timestep"), ValueError, "class_embed_type"),
    (dict(some_future_option=3), ValueError, "some_future_option"),
    (dict(_class_name="UNet2DConditionModel"), ValueError, "UNet2DConditionModel"),
    (dict(mid_block_type="UNetMidBlock2D"), ValueError, "mid_block_type"),
    (dict(down_block_types=("SimpleCrossAttnDownBlock2D", "DownBlock2D")), ValueError, "SimpleCrossAttnDownBlock2D"),
])
def test_import_refuses_options_by_name(change, error, match):
    ref = _reference()
    with pytest.raises(error, match=match):
        controlnet_from_diffusers({**ref.config, **change}, ref.state_dict(), sample_size=SIZE)


def test_import_and_export_name_bad_keys():
    ref = _reference()
    state = dict(ref.state_dict())
    with pytest.raises(LayoutError, match="controlnet_down_blocks.9.weight"):
        controlnet_from_diffusers(dict(ref.config), {**state, "controlnet_down_blocks.9.weight": state["conv_in.bias"]},
                                  sample_size=SIZE)
    del state["controlnet_mid_block.bias"]
    with pytest.raises(LayoutError, match="controlnet_mid_block.bias"):
        controlnet_from_diffusers(dict(ref.config), state, sample_size=SIZE)
    cfg = ControlNetConfig(control_channels=1, control_size=8 * SIZE, hint_channels=4)
    ours = ControlNet(EXPORTABLE, cfg).state_dict()
    del ours["zero_middle.bias"]
    with pytest.raises(LayoutError, match="zero_middle.bias"):
        controlnet_to_diffusers(EXPORTABLE, cfg, ours)


@pytest.mark.parametrize("change, match", [(dict(null_token=True), "null_token"), (dict(patch_size=2), "patch_size"),
                                           (dict(context_dim=0, transformer=False), "context_dim")])
def test_export_refuses_what_diffusers_cannot_hold(change, match):
    unet_cfg = EXPORTABLE.replace(**change)
    cfg = ControlNetConfig(control_channels=1, control_size=8 * SIZE, hint_channels=4)
    with pytest.raises(ValueError, match=match):
        controlnet_to_diffusers(unet_cfg, cfg, ControlNet(unet_cfg, cfg).state_dict())


def test_original_layout_is_what_diffusers_single_file_converter_reads():
    """Ours -> the original ControlNet keys (control_model.*) -> diffusers' own converter gives the
    diffusers model tensor for tensor; and the original keys come back into ours unchanged."""
    ref = _reference(norm_num_groups=32)  # the original layout has 32 GroupNorm groups
    unet_cfg, cfg, state = controlnet_from_diffusers(dict(ref.config), ref.state_dict(), sample_size=SIZE)
    original = controlnet_to_ldm(unet_cfg, cfg, state)
    assert all(k.startswith("control_model.") for k in original)
    assert "control_model.input_hint_block.14.weight" in original  # SD's: 3 halvings, zero conv at index 14
    converted = convert_controlnet_checkpoint(original, dict(ref.config))
    assert set(converted) == set(ref.state_dict())
    assert all(torch.equal(converted[k], v) for k, v in ref.state_dict().items())
    for keys in (original, {k.removeprefix("control_model."): v for k, v in original.items()}):
        unet_cfg2, cfg2, state2 = controlnet_from_ldm(keys, unet_cfg)
        assert cfg2 == cfg and all(torch.equal(state[k], state2[k]) for k in state) and set(state2) == set(state)
    with pytest.raises(LayoutError, match="model.diffusion_model.out.2.weight"):
        controlnet_from_ldm({**original, "model.diffusion_model.out.2.weight": state["zero_middle.bias"]}, unet_cfg)
    cfg = ControlNetConfig(control_channels=1, control_size=8 * SIZE, hint_channels=4)
    with pytest.raises(ValueError, match="norm_groups"):  # EXPORTABLE has 8 groups
        controlnet_to_ldm(EXPORTABLE, cfg, ControlNet(EXPORTABLE, cfg).state_dict())
