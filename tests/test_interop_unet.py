"""Parity tests (DESIGN.md section 7): diffusers U-Nets and original Stable Diffusion (LDM) U-Net weights in
and out of ``nn.unet.UNet`` (latentdiff/interop/unet.py), checked against diffusers' own forward passes,
``from_pretrained`` and single-file converter, on randomised weights (zero-initialised layers included)."""

from __future__ import annotations

import os
import resource
import time

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import UNet2DConditionModel, UNet2DModel  # noqa: E402
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint  # noqa: E402

from latentdiff.interop.keys import LayoutError  # noqa: E402
from latentdiff.interop.unet import (save_diffusers_folder, unet_from_diffusers,  # noqa: E402
                                     unet_from_diffusers_model, unet_from_ldm, unet_pairs, unet_to_diffusers,
                                     unet_to_ldm)
from latentdiff.nn.attention import SpatialTransformer  # noqa: E402
from latentdiff.nn.unet import UNet, UNetConfig  # noqa: E402
from sd_fixture import randomise  # noqa: E402

TOL = 1e-5
PREFIX = "model.diffusion_model."
UNET2D = {  # UNet2DModel configs: DDPM's own options (google's checkpoints), scale-shift, no attention levels
    "ddpm": dict(down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=None, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6),
    "scale_shift": dict(down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"), attention_head_dim=16,
                        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"), resnet_time_scale_shift="scale_shift",
                        attn_norm_num_groups=8),
    "no_attention": dict(down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                         resnet_time_scale_shift="scale_shift", attn_norm_num_groups=8, attention_head_dim=8),
}
CONDITION = {  # Stable Diffusion 1.x-like (conv projections, 8 heads, 768 context) and 2.x-like (linear, 64 per head)
    "sd1": dict(sample_size=32, block_out_channels=(32, 64, 64), layers_per_block=2, attention_head_dim=8,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=768),
    "sd2": dict(sample_size=16, block_out_channels=(64, 128), layers_per_block=1, attention_head_dim=[1, 2],
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"), use_linear_projection=True,
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=1024),
}


def unet2d(name: str) -> UNet2DModel:
    return randomise(UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64),
                                 layers_per_block=1, norm_num_groups=8, **UNET2D[name]))


def condition(name: str) -> UNet2DConditionModel:
    return randomise(UNet2DConditionModel(in_channels=4, out_channels=4, **CONDITION[name]))


def ours_of(cfg: UNetConfig, state: dict) -> UNet:
    net = UNet(cfg).eval()
    net.load_state_dict(state, strict=True)
    return net


def inputs(model, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    c, s = model.config.in_channels, model.config.sample_size
    x, t = torch.randn(2, c, s, s, generator=g), torch.tensor([17.0, 640.0])
    text = (torch.randn(2, 7, model.config.cross_attention_dim, generator=g)
            if isinstance(model, UNet2DConditionModel) else None)
    return x, t, text


def max_error(theirs, ours: UNet, x, t, text) -> float:
    with torch.no_grad():
        a = theirs(x, t, encoder_hidden_states=text).sample if text is not None else theirs(x, t).sample
        b = ours(x, t, text=text)
    assert a.abs().mean() > 0.1, "outputs too small for the tolerance to mean anything"
    err = (a - b).abs().max().item()
    print(f"max abs error {err:.2e} (mean |output| {a.abs().mean():.2f})")
    return err


@pytest.mark.parametrize("name", sorted(UNET2D))
def test_unet2d_forward_parity(name):
    model = unet2d(name)
    cfg, state = unet_from_diffusers_model(model)
    assert cfg.scale_shift_norm == (name != "ddpm") and cfg.attention_resolutions == {
        "ddpm": (8,), "scale_shift": (16, 8), "no_attention": ()}[name]
    assert max_error(model, ours_of(cfg, state), *inputs(model)) < TOL


@pytest.mark.parametrize("name", sorted(CONDITION))
def test_condition_forward_parity(name):
    model = condition(name)
    cfg, state = unet_from_diffusers_model(model)
    assert cfg.linear_projection == (name == "sd2") and not cfg.null_token
    assert (cfg.num_heads, cfg.head_dim) == {"sd1": (8, None), "sd2": (None, 64)}[name]
    assert max_error(model, ours_of(cfg, state), *inputs(model)) < TOL


OWN = {  # configs of our own that diffusers can hold
    "pixel": UNetConfig(image_size=16, in_channels=3, channels=32, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(8,), num_heads=None, head_dim=16, norm_groups=16, dropout=0.0),
    "text": UNetConfig(image_size=16, in_channels=4, channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                       attention_resolutions=(16, 4), num_heads=2, context_dim=24, transformer=True,
                       null_token=False, linear_projection=True, transformer_norm_eps=1e-6, norm_groups=8,
                       scale_shift_norm=True, dropout=0.0),
}


@pytest.mark.parametrize("name", sorted(OWN))
def test_export_loads_in_diffusers_from_pretrained(name, tmp_path):
    cfg = OWN[name]
    ours = randomise(UNet(cfg))
    config, state = unet_to_diffusers(cfg, ours.state_dict())
    save_diffusers_folder(str(tmp_path), config, state)
    cls = UNet2DConditionModel if cfg.context_dim else UNet2DModel
    assert config["_class_name"] == cls.__name__
    theirs = cls.from_pretrained(str(tmp_path)).eval()
    assert max_error(theirs, ours, *inputs(theirs)) < TOL


def assert_same_tensors(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.parametrize("name", ["ddpm", "scale_shift", "sd1", "sd2"])
def test_import_export_import_is_the_identity(name):
    model = unet2d(name) if name in UNET2D else condition(name)
    cfg, state = unet_from_diffusers_model(model)
    config, theirs = unet_to_diffusers(cfg, state)
    cfg2, again = unet_from_diffusers(config, theirs)
    assert cfg2 == cfg
    assert_same_tensors(again, state)
    if name in CONDITION:
        assert_same_tensors(theirs, model.state_dict())  # flip_sin_to_cos true: diffusers' own tensors back
        cfg3, from_ldm = unet_from_ldm(unet_to_ldm(cfg, state))
        assert cfg3 == cfg
        assert_same_tensors(from_ldm, state)


@pytest.mark.parametrize("name", sorted(CONDITION))
def test_ldm_layout_matches_diffusers_converter(name):
    model = condition(name)
    cfg, state = unet_from_diffusers_model(model)
    ldm = {PREFIX + k: v for k, v in unet_to_ldm(cfg, state).items()}
    converted = convert_ldm_unet_checkpoint(ldm, dict(model.config))
    assert_same_tensors(converted, model.state_dict())
    inferred, _ = unet_from_ldm({k.removeprefix(PREFIX): v for k, v in ldm.items()})
    assert inferred == cfg


def test_unknown_and_missing_keys_are_named():
    model = condition("sd2")
    config = {**model.config, "_class_name": "UNet2DConditionModel"}
    state = dict(model.state_dict())
    with pytest.raises(LayoutError, match="could not be placed: extra.weight"):
        unet_from_diffusers(config, {**state, "extra.weight": torch.zeros(1)})
    del state["mid_block.attentions.0.proj_in.weight"]
    with pytest.raises(LayoutError, match="no key 'mid_block.attentions.0.proj_in.weight'"):
        unet_from_diffusers(config, state)
    cfg, ours = unet_from_diffusers_model(model)
    with pytest.raises(LayoutError, match="missing key.*conv_out.bias"):
        unet_to_ldm(cfg, {k: v for k, v in ours.items() if k != "conv_out.bias"})
    with pytest.raises(LayoutError, match="wrongly shaped.*conv_in.weight"):
        unet_to_diffusers(cfg, {**ours, "conv_in.weight": torch.zeros(1)})


@pytest.mark.parametrize("option, value", [
    ("class_embed_type", "timestep"), ("addition_embed_type", "text_time"), ("transformer_layers_per_block", 2),
    ("time_embedding_type", "fourier"), ("dual_cross_attention", True), ("only_cross_attention", [True, False]),
    ("resnet_time_scale_shift", "spatial"), ("some_future_option", 3)])
def test_unsupported_diffusers_option_is_named(option, value):
    config = {**condition("sd2").config, "_class_name": "UNet2DConditionModel", option: value}
    with pytest.raises(ValueError, match=option):
        unet_from_diffusers(config, {})


def test_options_without_effect_are_accepted():
    model = condition("sd2")
    config = {**model.config, "_class_name": "UNet2DConditionModel", "upcast_attention": True, "dropout": 0.1}
    cfg, _ = unet_from_diffusers(config, model.state_dict())
    assert cfg.dropout == 0.1


@pytest.mark.parametrize("change, field", [
    (dict(patch_size=2), "patch_size"), (dict(null_token=True), "null_token"), (dict(num_classes=3), "num_classes"),
    (dict(transformer=False, linear_projection=False), "transformer"), (dict(pooled_dim=8), "pooled_dim"),
    (dict(transformer_norm_eps=1e-5), "transformer_norm_eps"), (dict(norm_groups=12), "norm_groups")])
def test_export_refuses_what_diffusers_cannot_hold(change, field):
    cfg = OWN["text"].replace(**change)
    with pytest.raises(ValueError, match=f"model.{field}="):
        unet_to_diffusers(cfg, UNet(cfg).state_dict())


def test_ldm_refuses_pixel_unet_and_other_norms():
    with pytest.raises(ValueError, match="model.context_dim="):
        unet_to_ldm(OWN["pixel"], UNet(OWN["pixel"]).state_dict())
    cfg = OWN["text"]  # 8 groups
    with pytest.raises(ValueError, match="model.norm_groups=8"):
        unet_to_ldm(cfg, UNet(cfg).state_dict())


def test_encoder_pairs_are_the_encoder_half():
    cfg, _ = unet_from_diffusers_model(condition("sd1"))
    encoder = [p.ours for p in unet_pairs(cfg, "diffusers", part="encoder")]
    everything = [p.ours for p in unet_pairs(cfg, "diffusers")]
    assert everything[:len(encoder)] == encoder
    assert {k.split(".")[0] for k in encoder} == {"time_embed", "conv_in", "down", "middle"}
    assert {k.split(".")[0] for k in everything[len(encoder):]} == {"up", "norm_out", "conv_out"}


def test_without_null_token_text_is_required():
    cfg = OWN["text"]
    net = UNet(cfg).eval()
    x, t = torch.randn(1, 4, 16, 16), torch.ones(1)
    with pytest.raises(ValueError, match="no learned null token"):
        net(x, t)
    with pytest.raises(ValueError, match="text_mask is all False"):
        net(x, t, text=torch.randn(1, 3, 24), text_mask=torch.zeros(1, 3, dtype=torch.bool))
    assert net(x, t, text=torch.randn(1, 3, 24)).shape == x.shape


def test_linear_projection_is_the_conv_projection():
    torch.manual_seed(0)
    conv = randomise(SpatialTransformer(32, 12, num_heads=4, groups=8, eps=1e-6))
    linear = SpatialTransformer(32, 12, num_heads=4, groups=8, eps=1e-6, linear=True).eval()
    linear.load_state_dict({k: v.flatten(1) if k.startswith("proj_") and v.ndim == 4 else v
                            for k, v in conv.state_dict().items()})
    x, context = torch.randn(2, 32, 4, 4), torch.randn(2, 5, 12)
    with torch.no_grad():
        assert (conv(x, context) - linear(x, context)).abs().max() < 1e-6


@pytest.mark.slow  # ~40 s, 4.3 GiB: run by `make test` (it fits the CI budget); `-m "not slow"` skips it
def test_sd15_unet_full_size():
    """The full Stable Diffusion 1.5 U-Net (diffusers' default UNet2DConditionModel but for its 1280-wide
    context: SD 1.5's is 768; 860M parameters), random weights: import, forward parity at a 32x32 latent,
    and the LDM round trip through diffusers' converter. The two models share their tensors
    (load_state_dict(assign=True)) to save memory."""
    start = time.perf_counter()
    with torch.device("meta"):
        model = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    model = randomise(model.to_empty(device="cpu"), std=0.02)
    assert sum(p.numel() for p in model.parameters()) == 859_520_964
    cfg, state = unet_from_diffusers_model(model)
    assert (cfg.channels, cfg.channel_mult, cfg.context_dim, cfg.num_heads) == (320, (1, 2, 4, 4), 768, 8)
    with torch.device("meta"):
        ours = UNet(cfg)
    ours.load_state_dict(state, strict=True, assign=True)
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 77, 768, generator=g)
    for t in (torch.tensor([981.0]), torch.tensor([1.0])):
        assert max_error(model, ours.eval(), x, t, text) < TOL
    ldm = {PREFIX + k: v for k, v in unet_to_ldm(cfg, state).items()}
    assert_same_tensors(convert_ldm_unet_checkpoint(ldm, dict(model.config)), model.state_dict())
    cfg_ldm, from_ldm = unet_from_ldm({k.removeprefix(PREFIX): v for k, v in ldm.items()})
    assert cfg_ldm == cfg
    assert_same_tensors(from_ldm, state)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(f"SD 1.5 U-Net: {time.perf_counter() - start:.1f} s, peak RSS {peak:.1f} GiB (pid {os.getpid()})")
