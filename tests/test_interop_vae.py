"""Parity: Stable Diffusion's KL autoencoder (diffusers' AutoencoderKL, LDM's first_stage_model) in and out of
ours (latentdiff.interop.vae). Every weight is random (fixed seed), so no map is right by accident."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import AutoencoderKL  # noqa: E402
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from sd_fixture import randomise  # noqa: E402

from latentdiff.autoencoders.models import AutoencoderConfig, KLAutoencoder  # noqa: E402
from latentdiff.interop.keys import LayoutError  # noqa: E402
from latentdiff.interop.vae import (config_from_ldm, ldm_vae_state, vae_from_diffusers, vae_from_ldm,  # noqa: E402
                                    vae_to_diffusers, vae_to_ldm)

TOL = 1e-5


def _reference(widths=(32, 64), layers=1, groups=8, quant=True, attention=True, **kw) -> AutoencoderKL:
    vae = AutoencoderKL(block_out_channels=widths, down_block_types=("DownEncoderBlock2D",) * len(widths),
                        up_block_types=("UpDecoderBlock2D",) * len(widths), layers_per_block=layers,
                        latent_channels=4, norm_num_groups=groups, sample_size=32, use_quant_conv=quant,
                        use_post_quant_conv=quant, mid_block_add_attention=attention, **kw)
    return randomise(vae)


def _ours(cfg: AutoencoderConfig, state: dict) -> KLAutoencoder:
    model = KLAutoencoder(cfg).eval()
    model.load_state_dict(state, strict=True)
    return model


@torch.no_grad()
def _errors(ref: AutoencoderKL, model: KLAutoencoder, size: int = 32, relative: bool = False) -> dict:
    """Max abs differences of the posterior, the scaled latents and the decoded images; with ``relative``
    each divided by max(1, the reference's max abs value)."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, size, size, generator=g) * 2 - 1
    scale, shift = ref.config.scaling_factor, ref.config.shift_factor or 0.0
    q = ref.encode(x).latent_dist
    ours = model.posterior(x)
    z = torch.randn(ours.mean.shape, generator=g)
    decoded = ref.decode(z / scale + shift).sample
    assert decoded.abs().max() > 0.05 and q.mean.std() > 0.05  # the comparison is not between near-zeros
    pairs = {"mean": (ours.mean, q.mode()), "logvar": (ours.logvar, q.logvar),
             "z": (model.encode(x), (q.mode() - shift) * scale), "decode": (model.decode(z), decoded)}
    return {name: ((a - b).abs().max() / (max(1.0, b.abs().max().item()) if relative else 1.0)).item()
            for name, (a, b) in pairs.items()}


@pytest.mark.parametrize("quant,attention", [(True, True), (False, True), (True, False)])
def test_encode_decode_equal_diffusers(quant, attention):
    ref = _reference(quant=quant, attention=attention, shift_factor=0.1, scaling_factor=0.3)
    cfg, state = vae_from_diffusers(dict(ref.config), ref.state_dict())
    assert (cfg.layout, cfg.quant_conv, cfg.attention) == ("ldm", quant, attention)
    assert (cfg.scale_factor, cfg.shift_factor, cfg.channel_mult) == (0.3, 0.1, (1, 2))
    errors = _errors(ref, _ours(cfg, state))
    print("max abs errors", errors)
    assert max(errors.values()) < TOL, errors


def test_legacy_attention_names_import():
    ref = _reference()
    legacy = {k.replace("to_q", "query").replace("to_k", "key").replace("to_v", "value")
              .replace("to_out.0", "proj_attn"): t for k, t in ref.state_dict().items()}
    assert "encoder.mid_block.attentions.0.query.weight" in legacy
    cfg, state = vae_from_diffusers(dict(ref.config), legacy)
    assert max(_errors(ref, _ours(cfg, state)).values()) < TOL


def test_export_loads_in_diffusers(tmp_path):
    cfg = AutoencoderConfig(kind="kl", image_size=32, in_channels=3, channels=32, channel_mult=(1, 2),
                            num_res_blocks=2, attention=True, norm_groups=8, latent_channels=4, scale_factor=0.25,
                            shift_factor=-0.05, layout="ldm", quant_conv=True)
    model = randomise(KLAutoencoder(cfg))
    config, state = vae_to_diffusers(cfg, model.state_dict())
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    ref = AutoencoderKL.from_pretrained(tmp_path).eval()
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in model.parameters())
    assert list(AutoencoderKL.from_config(config).config.block_out_channels) == [32, 64]
    errors = _errors(ref, model)
    print("max abs errors", errors)
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("quant", [True, False])
def test_round_trips_are_the_identity(quant):
    ref = _reference(layers=2, quant=quant)
    theirs = ref.state_dict()
    cfg, ours = vae_from_diffusers(dict(ref.config), theirs)
    _, back = vae_to_diffusers(cfg, ours)
    assert back.keys() == theirs.keys() and all(torch.equal(back[k], theirs[k]) for k in theirs)
    ldm = vae_to_ldm(cfg, ours)
    cfg2, ours2 = vae_from_ldm(ldm, image_size=32, norm_groups=8, scale_factor=cfg.scale_factor)
    assert cfg2 == cfg
    assert ours2.keys() == ours.keys() and all(torch.equal(ours2[k], ours[k]) for k in ours)
    ldm2 = vae_to_ldm(cfg2, ours2)
    assert ldm2.keys() == ldm.keys() and all(torch.equal(ldm2[k], ldm[k]) for k in ldm)


def _check_ldm_against_diffusers_converter(ref: AutoencoderKL, cfg: AutoencoderConfig, ours: dict) -> None:
    ldm = vae_to_ldm(cfg, ours)
    assert "decoder.up.0.block.0.conv1.weight" in ldm and ldm["encoder.mid.attn_1.q.weight"].ndim == 4
    converted = convert_ldm_vae_checkpoint({f"first_stage_model.{k}": t for k, t in ldm.items()}, dict(ref.config))
    expected = ref.state_dict()
    assert converted.keys() == expected.keys()
    for k, t in expected.items():
        assert torch.equal(converted[k], t), k


def test_ldm_layout_matches_diffusers_converter():
    ref = _reference(widths=(32, 64, 64), layers=2, groups=32)
    cfg, ours = vae_from_diffusers(dict(ref.config), ref.state_dict())
    _check_ldm_against_diffusers_converter(ref, cfg, ours)
    ldm = vae_to_ldm(cfg, ours)
    checkpoint = {f"first_stage_model.{k}": t for k, t in ldm.items()} | {"model.diffusion_model.x": torch.ones(1)}
    inferred = config_from_ldm(ldm_vae_state(checkpoint), image_size=32, norm_groups=32, scale_factor=0.18215)
    assert inferred == cfg
    cfg2, ours2 = vae_from_ldm(ldm, image_size=32)  # SD's scale factor by default
    assert cfg2.scale_factor == 0.18215 and cfg2.channel_mult == (1, 2, 2) and cfg2.num_res_blocks == 2
    assert max(_errors(ref, _ours(cfg2, ours2)).values()) < TOL


def test_defaults_keep_our_layout():
    cfg = AutoencoderConfig()
    model = KLAutoencoder(cfg)
    assert not any("quant_conv" in k for k in model.state_dict())
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.eps == 1e-5 for m in norms)
    assert all(not getattr(m, "asymmetric", False) for m in model.modules())
    ldm = KLAutoencoder(cfg.replace(layout="ldm", quant_conv=True))
    assert all(m.eps == 1e-6 for m in ldm.modules() if isinstance(m, torch.nn.GroupNorm))
    assert {"quant_conv.weight", "post_quant_conv.weight"} <= set(ldm.state_dict())


def test_errors_name_the_keys():
    ref = _reference()
    config, theirs = dict(ref.config), ref.state_dict()
    with pytest.raises(LayoutError, match="encoder.extra.weight"):
        vae_from_diffusers(config, {**theirs, "encoder.extra.weight": torch.zeros(1)})
    missing = {k: t for k, t in theirs.items() if k != "decoder.conv_out.bias"}
    with pytest.raises(LayoutError, match="decoder.conv_out.bias"):
        vae_from_diffusers(config, missing)
    cfg, ours = vae_from_diffusers(config, theirs)
    with pytest.raises(LayoutError, match="encoder.conv_in.bias"):
        vae_to_ldm(cfg, {k: t for k, t in ours.items() if k != "encoder.conv_in.bias"})
    with pytest.raises(LayoutError, match="stray"):
        vae_to_diffusers(cfg, {**ours, "stray": torch.zeros(1)})
    with pytest.raises(LayoutError, match="encoder.conv_in.weight .*expected"):
        vae_from_ldm({**vae_to_ldm(cfg, ours), "encoder.conv_in.weight": torch.zeros(32, 3, 1, 1)}, cfg)
    ldm = vae_to_ldm(cfg, ours)
    with pytest.raises(LayoutError, match="encoder.down.0.attn.0.q.weight"):
        vae_from_ldm({**ldm, "encoder.down.0.attn.0.q.weight": torch.zeros(32, 32, 1, 1)}, cfg)


def test_unsupported_configs_are_refused_by_name():
    config, theirs = dict(_reference().config), {}
    for change, name in [({"_class_name": "VQModel"}, "VQModel"), ({"act_fn": "relu"}, "act_fn"),
                         ({"latents_mean": [0.0] * 4}, "latents_mean"), ({"use_post_quant_conv": False},
                                                                        "use_post_quant_conv"),
                         ({"down_block_types": ["CrossAttnDownBlock2D", "DownEncoderBlock2D"]}, "down_block_types"),
                         ({"norm_type": "spatial"}, "norm_type")]:
        with pytest.raises(LayoutError, match=name):
            vae_from_diffusers({**config, **change}, theirs)
    cfg = AutoencoderConfig(kind="vq", channels=32, channel_mult=(1, 2), norm_groups=8, layout="ldm",
                            scale_factor=1.0)
    with pytest.raises(LayoutError, match="kind 'vq'"):
        vae_to_diffusers(cfg, {})
    with pytest.raises(LayoutError, match="VQ"):
        vae_from_ldm({"quantize.embedding.weight": torch.zeros(8, 4)})
    kl = cfg.replace(kind="kl")
    with pytest.raises(LayoutError, match="layout 'latentdiff'"):
        vae_to_ldm(kl.replace(layout="latentdiff"), {})
    with pytest.raises(LayoutError, match="scale_factor None"):
        vae_to_diffusers(kl.replace(scale_factor=None), {})
    with pytest.raises(LayoutError, match="norm_groups 24"):
        vae_to_ldm(kl.replace(norm_groups=24), {})


@pytest.mark.slow  # ~5 s, 1.2 GiB: run by `make test`; `-m "not slow"` skips it
def test_sd_vae_full_size():
    """Stable Diffusion's VAE (83.7M parameters, random weights): import, parity at 64x64, LDM round trip."""
    ref = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                        sample_size=512)
    randomise(ref)
    assert 83.6e6 < sum(p.numel() for p in ref.parameters()) < 83.7e6
    cfg, ours = vae_from_diffusers(dict(ref.config), ref.state_dict())
    assert (cfg.channels, cfg.channel_mult, cfg.num_res_blocks, cfg.image_size) == (128, (1, 2, 4, 4), 2, 512)
    # 512-wide convs (fan-in 4608) and ~30 layers: fp32 rounding grows with the outputs (|decode| ~ 5 here)
    errors = _errors(ref, _ours(cfg, ours), size=64, relative=True)
    print("max abs errors / max(1, max abs reference)", errors)
    assert max(errors.values()) < TOL, errors
    ldm = vae_to_ldm(cfg, ours)
    assert len(ldm) == len(ours) + 8  # qkv weight and bias are 3 tensors each, in two middle attentions
    cfg2, ours2 = vae_from_ldm(ldm)
    assert cfg2 == cfg
    assert all(torch.equal(ours2[k], ours[k]) for k in ours)
    _check_ldm_against_diffusers_converter(ref, cfg, ours)
