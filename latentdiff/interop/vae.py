"""Stable Diffusion's KL autoencoder in and out of our :class:`KLAutoencoder`: diffusers' ``AutoencoderKL``
(config dict + state dict) and the original LDM / Stable Diffusion ``first_stage_model`` state dict.

The maps are exact (tests/test_interop_vae.py checks encode and decode equal to diffusers' within 1e-5 in
fp32). Our model represents SD's VAE with ``layout="ldm"`` (GroupNorm eps 1e-6; downsampling pads one row
and column of zeros at the bottom and right, then a stride-2 conv) and ``quant_conv=True`` (the 1x1 convs
on the moments and on z). Where the layouts differ:

* the middle attention: ours is one 1x1 conv of 3C channels (q, k, v stacked); diffusers keeps three
  Linears ``to_q``, ``to_k``, ``to_v`` and a Linear ``to_out.0``, LDM three 1x1 convs ``q``, ``k``, ``v``
  and ``proj_out``. One head of all C channels in every layout.
* LDM indexes the decoder's levels by resolution (``decoder.up.{level}``, level 0 the finest), diffusers
  and ours in the order they run: diffusers' ``up_blocks[k]`` is LDM's ``up.{L - 1 - k}``.
* latents: diffusers and SD use z = (mode - shift_factor) * scaling_factor and decode z / scaling_factor +
  shift_factor, the posterior mode being its mean; ours is z = (E(x) - shift) * scale with E(x) the mean:
  the same numbers. SD's 0.18215 is not in LDM weights; ``vae_from_ldm`` takes it as an argument.

Every name correspondence is written once, in :func:`pairs`, as (our key, their key) pieces; both
directions and both layouts come from it. A source key no piece reads and a target key no piece fills
are errors naming the keys (:mod:`latentdiff.interop.keys`).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping

import torch

from latentdiff.autoencoders.models import AutoencoderConfig, build_autoencoder
from latentdiff.interop.keys import LayoutError, StrictReader, check_like

SD_SCALE_FACTOR = 0.18215        # Stable Diffusion v1/v2's latent scale (its LDM config), not stored in weights
DIFFUSERS_VERSION = "0.42.1"     # the diffusers release these maps are tested against
_DIFFUSERS_KEYS = {"in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
                   "layers_per_block", "act_fn", "latent_channels", "norm_num_groups", "sample_size",
                   "scaling_factor", "shift_factor", "latents_mean", "latents_std", "force_upcast",
                   "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention"}
# diffusers < 0.14 named the attention's Linears query, key, value, proj_attn (still found in files on the Hub)
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}

_NAMES = {
    "diffusers": dict(down="encoder.down_blocks.{level}.resnets.{j}",
                      downsample="encoder.down_blocks.{level}.downsamplers.0",
                      up="decoder.up_blocks.{k}.resnets.{j}", upsample="decoder.up_blocks.{k}.upsamplers.0",
                      mid=("mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1"),
                      norm_out="conv_norm_out", shortcut="conv_shortcut", attn_norm="group_norm",
                      qkv=("to_q", "to_k", "to_v"), attn_out="to_out.0", linear=True),
    "ldm": dict(down="encoder.down.{level}.block.{j}", downsample="encoder.down.{level}.downsample",
                up="decoder.up.{level}.block.{j}", upsample="decoder.up.{level}.upsample",
                mid=("mid.block_1", "mid.attn_1", "mid.block_2"),
                norm_out="norm_out", shortcut="nin_shortcut", attn_norm="norm",
                qkv=("q", "k", "v"), attn_out="proj_out", linear=False),
}
_TITLES = {"diffusers": "diffusers AutoencoderKL", "ldm": "LDM first_stage_model"}
_OURS = "latentdiff KLAutoencoder"


@dataclasses.dataclass(frozen=True)
class Piece:
    """Their tensor ``theirs`` is chunk ``part`` of ``parts`` of our tensor ``ours`` along dim 0 (a fused
    q, k, v), flattened to a Linear weight (O, I) from our 1x1 conv's (O, I, 1, 1) when ``linear``."""
    ours: str
    theirs: str
    part: int = 0
    parts: int = 1
    linear: bool = False


def _param(ours: str, theirs: str, **kw) -> Iterator[Piece]:
    """A layer's weight and bias (only the weight changes shape when ``linear``)."""
    yield Piece(f"{ours}.weight", f"{theirs}.weight", **kw)
    yield Piece(f"{ours}.bias", f"{theirs}.bias", **{**kw, "linear": False})


def _resblock(ours: str, theirs: str, in_ch: int, out_ch: int, names: dict) -> Iterator[Piece]:
    for layer in ("norm1", "conv1", "norm2", "conv2"):
        yield from _param(f"{ours}.{layer}", f"{theirs}.{layer}")
    if in_ch != out_ch:
        yield from _param(f"{ours}.skip", f"{theirs}.{names['shortcut']}")


def _middle(ours: str, theirs: str, width: int, attention: bool, names: dict) -> Iterator[Piece]:
    """ResBlock, single-head self-attention (if any), ResBlock."""
    first, attn, second = (f"{theirs}.{n}" for n in names["mid"])
    yield from _resblock(f"{ours}.0", first, width, width, names)
    if attention:
        yield from _param(f"{ours}.1.norm", f"{attn}.{names['attn_norm']}")
        for i, name in enumerate(names["qkv"]):
            yield from _param(f"{ours}.1.qkv", f"{attn}.{name}", part=i, parts=3, linear=names["linear"])
        yield from _param(f"{ours}.1.proj", f"{attn}.{names['attn_out']}", linear=names["linear"])
    yield from _resblock(f"{ours}.{2 if attention else 1}", second, width, width, names)


def pairs(cfg: AutoencoderConfig, layout: str) -> Iterator[Piece]:
    """Every (our key, their key) piece of a KL autoencoder of ``cfg`` in ``layout`` ("diffusers" or "ldm")."""
    names = _NAMES[layout]
    widths = [cfg.channels * m for m in cfg.channel_mult]
    L, R = len(widths), cfg.num_res_blocks
    yield from _param("encoder.conv_in", "encoder.conv_in")
    width = cfg.channels
    for level in range(L):  # our encoder.down: R ResBlocks then a Downsample per level but the last
        for j in range(R):
            yield from _resblock(f"encoder.down.{level * (R + 1) + j}", names["down"].format(level=level, j=j),
                                 width, widths[level], names)
            width = widths[level]
        if level < L - 1:
            yield from _param(f"encoder.down.{level * (R + 1) + R}.conv",
                              names["downsample"].format(level=level) + ".conv")
    yield from _middle("encoder.middle", "encoder", width, cfg.attention, names)
    yield from _param("encoder.norm_out", f"encoder.{names['norm_out']}")
    yield from _param("encoder.conv_out", "encoder.conv_out")
    yield from _param("decoder.conv_in", "decoder.conv_in")
    yield from _middle("decoder.middle", "decoder", width, cfg.attention, names)
    for k in range(L):  # our decoder.up: R + 1 ResBlocks then an Upsample per level, coarsest first
        level = L - 1 - k
        for j in range(R + 1):
            yield from _resblock(f"decoder.up.{k * (R + 2) + j}", names["up"].format(k=k, j=j, level=level),
                                 width, widths[level], names)
            width = widths[level]
        if level > 0:
            yield from _param(f"decoder.up.{k * (R + 2) + R + 1}.conv",
                              names["upsample"].format(k=k, level=level) + ".conv")
    yield from _param("decoder.norm_out", f"decoder.{names['norm_out']}")
    yield from _param("decoder.conv_out", "decoder.conv_out")
    if cfg.quant_conv:
        yield from _param("quant_conv", "quant_conv")
        yield from _param("post_quant_conv", "post_quant_conv")


def _check_sd_config(cfg: AutoencoderConfig) -> None:
    """Refuse, by name, what SD's autoencoder cannot be."""
    if cfg.kind != "kl":
        raise LayoutError(f"only the KL autoencoder converts (diffusers AutoencoderKL); kind {cfg.kind!r} does not")
    if cfg.layout != "ldm":
        raise LayoutError(f"layout {cfg.layout!r} has no equal in diffusers or LDM (GroupNorm eps 1e-5, symmetric "
                          "downsampling padding): only an AutoencoderConfig with layout='ldm' converts exactly")
    odd = [w for w in (cfg.channels * m for m in cfg.channel_mult) if w % cfg.norm_groups]
    if odd:
        raise LayoutError(f"widths {odd} are not divisible by norm_groups {cfg.norm_groups}: diffusers and LDM "
                          "do not reduce the GroupNorm's groups as ours does")


def _check_shapes(cfg: AutoencoderConfig, state: Mapping[str, torch.Tensor], layout: str) -> None:
    """Refuse a state dict whose keys or shapes are not those of ``build_autoencoder(cfg)``."""
    check_like(state, lambda: build_autoencoder(cfg), layout, "autoencoder")


def to_ours(cfg: AutoencoderConfig, state: Mapping[str, torch.Tensor], layout: str) -> dict:
    """Their state dict in ``layout`` -> ours, every source key placed and every target key filled."""
    _check_sd_config(cfg)
    reader, pieces = StrictReader(state, _TITLES[layout]), {}
    for p in pairs(cfg, layout):
        t = reader[p.theirs]
        pieces.setdefault(p.ours, [None] * p.parts)[p.part] = t[:, :, None, None] if p.linear else t
    reader.finish()
    out = {k: v[0] if len(v) == 1 else torch.cat(v) for k, v in pieces.items()}
    _check_shapes(cfg, out, _TITLES[layout])
    return out


def to_theirs(cfg: AutoencoderConfig, state: Mapping[str, torch.Tensor], layout: str) -> dict:
    """Our state dict -> theirs in ``layout``; refused unless it is exactly a ``cfg`` model's."""
    _check_sd_config(cfg)
    reader, out = StrictReader(state, _OURS), {}
    for p in pairs(cfg, layout):
        t = reader[p.ours]
        t = t.chunk(p.parts)[p.part].clone() if p.parts > 1 else t  # clone: no shared storage in the file
        out[p.theirs] = t.flatten(1) if p.linear else t
    reader.finish()
    _check_shapes(cfg, state, _OURS)
    return out


def config_from_diffusers(config: Mapping) -> AutoencoderConfig:
    """An ``AutoencoderKL`` config dict (its config.json) -> our config; missing keys take diffusers' defaults."""
    name = config.get("_class_name", "AutoencoderKL")
    if name != "AutoencoderKL":
        raise LayoutError(f"only diffusers' AutoencoderKL converts, not {name!r}")
    unknown = sorted(k for k in config if not k.startswith("_") and k not in _DIFFUSERS_KEYS)
    if unknown:
        raise LayoutError(f"AutoencoderKL config options this map does not know: {unknown}")
    widths = list(config.get("block_out_channels", (64,)))
    down, up = config.get("down_block_types", ("DownEncoderBlock2D",)), config.get("up_block_types",
                                                                                   ("UpDecoderBlock2D",))
    refusals = {"act_fn": config.get("act_fn", "silu") != "silu",
                "down_block_types": list(down) != ["DownEncoderBlock2D"] * len(widths),
                "up_block_types": list(up) != ["UpDecoderBlock2D"] * len(widths),
                "out_channels": config.get("out_channels", 3) != config.get("in_channels", 3),
                "use_post_quant_conv": config.get("use_post_quant_conv", True) != config.get("use_quant_conv", True),
                "latents_mean": config.get("latents_mean") is not None,
                "latents_std": config.get("latents_std") is not None,
                "block_out_channels": any(w % widths[0] for w in widths)}
    bad = ", ".join(f"{k}={config.get(k)!r}" for k, refused in refusals.items() if refused)
    if bad:
        raise LayoutError(f"AutoencoderKL options with no equal in ours: {bad}"
                          " (SiLU, DownEncoderBlock2D / UpDecoderBlock2D, out = in channels, both quant convs or "
                          "none, one scalar scale and shift, widths multiples of the first)")
    size = config.get("sample_size", 32)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise LayoutError(f"sample_size {size} is not square")
        size = size[0]
    return AutoencoderConfig(
        kind="kl", image_size=int(size), in_channels=config.get("in_channels", 3), channels=widths[0],
        channel_mult=tuple(w // widths[0] for w in widths), num_res_blocks=config.get("layers_per_block", 1),
        attention=config.get("mid_block_add_attention", True), norm_groups=config.get("norm_num_groups", 32),
        latent_channels=config.get("latent_channels", 4), scale_factor=config.get("scaling_factor", SD_SCALE_FACTOR),
        shift_factor=config.get("shift_factor") or 0.0, layout="ldm", quant_conv=config.get("use_quant_conv", True))


def config_to_diffusers(cfg: AutoencoderConfig) -> dict:
    """Our config -> an ``AutoencoderKL`` config dict (what ``AutoencoderKL.from_config`` builds)."""
    _check_sd_config(cfg)
    if cfg.scale_factor is None:
        raise LayoutError("the latent scale factor has not been measured (scale_factor None) and diffusers "
                          "needs one: measure it (latentdiff.pipelines.autoencoder.measure_latent_scale) or set it")
    levels = len(cfg.channel_mult)
    return {"_class_name": "AutoencoderKL", "_diffusers_version": DIFFUSERS_VERSION,
            "in_channels": cfg.in_channels, "out_channels": cfg.in_channels,
            "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
            "block_out_channels": [cfg.channels * m for m in cfg.channel_mult],
            "layers_per_block": cfg.num_res_blocks, "act_fn": "silu", "latent_channels": cfg.latent_channels,
            "norm_num_groups": cfg.norm_groups, "sample_size": cfg.image_size, "scaling_factor": cfg.scale_factor,
            "shift_factor": cfg.shift_factor or None, "latents_mean": None, "latents_std": None,
            "force_upcast": True, "use_quant_conv": cfg.quant_conv, "use_post_quant_conv": cfg.quant_conv,
            "mid_block_add_attention": cfg.attention}


def vae_from_diffusers(config: Mapping, state: Mapping[str, torch.Tensor]) -> tuple[AutoencoderConfig, dict]:
    """diffusers ``AutoencoderKL`` (config dict, state dict) -> (our config, our state dict).

    The result loads into ``KLAutoencoder(cfg)``, whose ``encode(px (B, C, H, W)) -> z (B, c, H/f, W/f)``
    equals diffusers' ``(latent_dist.mode() - shift_factor) * scaling_factor`` and whose ``decode(z)`` equals
    ``vae.decode(z / scaling_factor + shift_factor).sample``. Attention weights under their pre-0.14 names
    (query, key, value, proj_attn) are read too.
    """
    cfg = config_from_diffusers(config)
    renamed = {}
    for key, t in state.items():
        head, _, tail = key.rpartition(".")
        stem, _, name = head.rpartition(".")
        legacy = ".mid_block.attentions.0" in stem and name in _LEGACY_ATTENTION
        renamed[f"{stem}.{_LEGACY_ATTENTION[name]}.{tail}" if legacy else key] = t
    return cfg, to_ours(cfg, renamed, "diffusers")


def vae_to_diffusers(cfg: AutoencoderConfig, state: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """(our config, our state dict) -> (``AutoencoderKL`` config dict, its state dict), for config.json and
    diffusion_pytorch_model.safetensors. Needs ``layout="ldm"`` and a measured ``scale_factor``."""
    config = config_to_diffusers(cfg)
    return config, to_theirs(cfg, state, "diffusers")


def ldm_vae_state(checkpoint: Mapping[str, torch.Tensor], prefix: str = "first_stage_model.") -> dict:
    """The autoencoder's tensors of a whole Stable Diffusion checkpoint, without ``prefix``."""
    out = {k[len(prefix):]: t for k, t in checkpoint.items() if k.startswith(prefix)}
    if not out:
        raise LayoutError(f"the checkpoint has no key starting with {prefix!r}")
    return out


def _indices(keys: list[str], prefix: str) -> int:
    """How many consecutive indices i have a key ``prefix + str(i) + '.'``."""
    found = {k[len(prefix):].split(".", 1)[0] for k in keys if k.startswith(prefix)}
    n = 0
    while str(n) in found:
        n += 1
    return n


def config_from_ldm(state: Mapping[str, torch.Tensor], *, image_size: int = 512, norm_groups: int = 32,
                    scale_factor: float = SD_SCALE_FACTOR) -> AutoencoderConfig:
    """Our config read off an LDM autoencoder's tensor shapes (widths, levels, ResBlocks per level, latent
    channels, middle attention, quant convs). Not in the weights, so arguments: the image size, the GroupNorm
    groups (32 in every SD VAE) and the latent scale (0.18215 for SD v1/v2; SDXL's VAE uses 0.13025)."""
    if "quantize.embedding.weight" in state:
        raise LayoutError("an LDM VQ autoencoder (quantize.embedding.weight): only the KL autoencoder converts")
    reader, keys = StrictReader(state, _TITLES["ldm"]), list(state)
    channels, in_channels = reader["encoder.conv_in.weight"].shape[:2]
    levels, res_blocks = _indices(keys, "encoder.down."), _indices(keys, "encoder.down.0.block.")
    widths = [reader[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(levels)]
    if any(w % channels for w in widths) or levels == 0:
        raise LayoutError(f"LDM encoder widths {widths} are not multiples of conv_in's {channels} channels")
    out_channels = reader["decoder.conv_out.weight"].shape[0]
    if out_channels != in_channels:
        raise LayoutError(f"the decoder gives {out_channels} channels, the encoder takes {in_channels}: ours "
                          "needs them equal")
    return AutoencoderConfig(
        kind="kl", image_size=image_size, in_channels=int(in_channels), channels=int(channels),
        channel_mult=tuple(w // channels for w in widths), num_res_blocks=res_blocks,
        attention="encoder.mid.attn_1.q.weight" in state, norm_groups=norm_groups,
        latent_channels=int(reader["decoder.conv_in.weight"].shape[1]), scale_factor=scale_factor,
        layout="ldm", quant_conv="quant_conv.weight" in state)


def vae_from_ldm(state: Mapping[str, torch.Tensor], cfg: AutoencoderConfig | None = None, *,
                 image_size: int = 512, norm_groups: int = 32,
                 scale_factor: float = SD_SCALE_FACTOR) -> tuple[AutoencoderConfig, dict]:
    """An LDM ``first_stage_model`` state dict (keys without that prefix: :func:`ldm_vae_state`) -> (our
    config, our state dict). ``cfg`` None: read off the tensor shapes by :func:`config_from_ldm` with the
    keyword arguments, which the weights do not hold (SD's scale 0.18215 by default). Training-only ``loss.*``
    tensors (LPIPS, discriminator) are left out on purpose; any other unplaced key is an error."""
    cfg = cfg or config_from_ldm(state, image_size=image_size, norm_groups=norm_groups, scale_factor=scale_factor)
    return cfg, to_ours(cfg, {k: t for k, t in state.items() if not k.startswith("loss.")}, "ldm")


def vae_to_ldm(cfg: AutoencoderConfig, state: Mapping[str, torch.Tensor]) -> dict:
    """Our state dict -> an LDM ``first_stage_model`` state dict (keys without the prefix; the scale factor,
    not being a weight, goes in the LDM config's ``scale_factor``). Needs ``layout="ldm"``."""
    return to_theirs(cfg, state, "ldm")
