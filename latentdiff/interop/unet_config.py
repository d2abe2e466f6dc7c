"""``UNetConfig`` <-> diffusers' U-Net config dicts, and a ``UNetConfig`` read off an original Stable
Diffusion (LDM) U-Net's tensor shapes: the config half of ``interop.unet``.

diffusers options map as: block_out_channels (c, c m_1, ...) -> channels c, channel_mult; a level whose
block type has attention (``AttnDownBlock2D``, ``CrossAttnDownBlock2D``) -> its side in
attention_resolutions; layers_per_block -> num_res_blocks; resnet_time_scale_shift "scale_shift" ->
scale_shift_norm; norm_num_groups, norm_eps, freq_shift, dropout -> the same; downsample_padding 0 ->
asymmetric_downsample; cross_attention_dim -> context_dim; use_linear_projection -> linear_projection;
heads (UNet2DModel: attention_head_dim channels per head, None: one head; UNet2DConditionModel:
attention_head_dim heads per level) -> num_heads or head_dim. Every other option must hold the one
value our U-Net computes (else ValueError naming it); options without effect on the maths are taken.
"""

from __future__ import annotations

from typing import Mapping

import torch

from latentdiff.interop.keys import LayoutError
from latentdiff.nn.attention import head_count
from latentdiff.nn.unet import UNetConfig

DIFFUSERS_VERSION = "0.42.1"  # the diffusers these maps are tested against
_FIXED_COMMON = {"center_input_sample": (False,), "time_embedding_type": ("positional",), "act_fn": ("silu", "swish"),
                 "mid_block_scale_factor": (1,), "class_embed_type": (None,), "num_class_embeds": (None,)}
_FIXED = {  # option -> the values our U-Net can represent
    "UNet2DModel": {**_FIXED_COMMON, "mid_block_type": ("UNetMidBlock2D",), "downsample_type": ("conv",),
                    "upsample_type": ("conv",), "add_attention": (True,)},
    "UNet2DConditionModel": {
        **_FIXED_COMMON, "mid_block_type": ("UNetMidBlock2DCrossAttn",), "num_attention_heads": (None,),
        **dict.fromkeys(("encoder_hid_dim", "encoder_hid_dim_type", "addition_embed_type", "addition_time_embed_dim",
                         "time_embedding_act_fn", "timestep_post_act", "time_cond_proj_dim", "cross_attention_norm",
                         "projection_class_embeddings_input_dim", "reverse_transformer_layers_per_block"), (None,)),
        "dual_cross_attention": (False,), "resnet_skip_time_act": (False,), "resnet_out_scale_factor": (1,),
        "conv_in_kernel": (3,), "conv_out_kernel": (3,), "attention_type": ("default",),
        "class_embeddings_concat": (False,), "mid_block_only_cross_attention": (None, False)},
}
_READ = {"sample_size", "in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
         "up_block_types", "attention_head_dim", "norm_num_groups", "norm_eps", "resnet_time_scale_shift",
         "freq_shift", "flip_sin_to_cos", "downsample_padding", "dropout", "time_embedding_dim"}
_TAKEN = {  # read below, or without effect on the maths (upcast_attention: fp16 softmax precision only)
    "UNet2DModel": _READ | {"attn_norm_num_groups", "num_train_timesteps"},
    "UNet2DConditionModel": _READ | {"cross_attention_dim", "use_linear_projection", "transformer_layers_per_block",
                                     "only_cross_attention", "upcast_attention", "addition_embed_type_num_heads"},
}
_BLOCKS = {"UNet2DModel": ("AttnDownBlock2D", "AttnUpBlock2D"),
           "UNet2DConditionModel": ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D")}


def levels(cfg: UNetConfig) -> list[tuple[int, bool]]:
    """(width, has attention) per resolution level of ``UNet(cfg)``."""
    res = cfg.image_size // cfg.patch_size
    return [(cfg.channels * m, (res // 2 ** level) in cfg.attention_resolutions)
            for level, m in enumerate(cfg.channel_mult)]


def _one(value, key: str, kind: str):
    """A per-level option that must be the same at every level -> its value."""
    values = set(value) if isinstance(value, (list, tuple)) else {value}
    if len(values) != 1:
        raise ValueError(f"{kind}: {key}={value!r} differs between levels; our U-Net has one value for all")
    return values.pop()


def _refuse_options(config: Mapping, kind: str) -> None:
    for key, value in config.items():
        if key.startswith("_") or key in _TAKEN[kind]:
            continue
        if key not in _FIXED[kind]:
            raise ValueError(f"{kind}: unknown option {key}={value!r}; latentdiff's U-Net map does not know it")
        if value not in _FIXED[kind][key]:
            raise ValueError(f"{kind}: {key}={value!r} has no counterpart in latentdiff's U-Net "
                             f"(it computes {key}={_FIXED[kind][key][0]!r})")


def _attention_levels(config: Mapping, kind: str) -> list[bool]:
    """Which levels have attention, from the block types; the up path must mirror the down path."""
    attn_down, attn_up = _BLOCKS[kind]
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    for t in down:
        if t not in (attn_down, "DownBlock2D"):
            raise ValueError(f"{kind}: down_block_types has {t!r}; latentdiff's U-Net maps {attn_down!r} and "
                             "'DownBlock2D'")
    mirror = [attn_up if t == attn_down else "UpBlock2D" for t in reversed(down)]
    if up != mirror:
        raise ValueError(f"{kind}: up_block_types={up} must mirror down_block_types ({mirror}): our U-Net has "
                         "attention at the same resolutions on both paths")
    return [t == attn_down for t in down]


def _heads(sites: list[tuple[int, int]], kind: str, key: str) -> dict:
    """(width, heads) of every attention layer -> num_heads (one count) or head_dim (one width)."""
    if any(h < 1 or c % h for c, h in sites):
        raise ValueError(f"{kind}: {key} gives heads that do not divide the widths: {sites}")
    if len({h for _, h in sites}) == 1:
        return dict(num_heads=sites[0][1], head_dim=None)
    if len({c // h for c, h in sites}) == 1:
        return dict(num_heads=None, head_dim=sites[0][0] // sites[0][1])
    raise ValueError(f"{kind}: {key} gives (width, heads) {sites}: neither one head count nor one head width")


def _common(config: Mapping, kind: str, attention: list[bool]) -> dict:
    widths, size = list(config["block_out_channels"]), config.get("sample_size")
    ch = widths[0]
    if any(w % ch for w in widths):
        raise ValueError(f"{kind}: block_out_channels={widths} must be multiples of the first")
    if isinstance(size, (list, tuple)):
        size = _one(size, "sample_size", kind)
    size = 8 * 2 ** (len(widths) - 1) if size is None else size  # not in the weights: nominal
    if config.get("time_embedding_dim") not in (None, 4 * ch):
        raise ValueError(f"{kind}: time_embedding_dim={config['time_embedding_dim']} must be 4 x {ch}")
    shift, padding = config.get("resnet_time_scale_shift", "default"), config.get("downsample_padding", 1)
    groups = config.get("norm_num_groups", 32)
    for key, value, known in (("resnet_time_scale_shift", shift, shift in ("default", "scale_shift")),
                              ("downsample_padding", padding, padding in (0, 1)),
                              ("norm_num_groups", groups, isinstance(groups, int) and groups > 0)):
        if not known:
            raise ValueError(f"{kind}: {key}={value!r} has no counterpart in latentdiff's U-Net")
    return dict(image_size=size, in_channels=config["in_channels"], out_channels=config["out_channels"], channels=ch,
                channel_mult=tuple(w // ch for w in widths),
                num_res_blocks=_one(config.get("layers_per_block", 2), "layers_per_block", kind),
                attention_resolutions=tuple(size // 2 ** i for i, a in enumerate(attention) if a),
                dropout=float(config.get("dropout", 0.0)), scale_shift_norm=shift == "scale_shift",
                norm_groups=groups, norm_eps=float(config.get("norm_eps", 1e-5)),
                freq_shift=float(config.get("freq_shift", 0)), asymmetric_downsample=padding == 0)


def _from_unet2d(config: Mapping, kind: str, attention: list[bool]) -> UNetConfig:
    args, d = _common(config, kind, attention), config.get("attention_head_dim", 8)
    widths = [w for w, a in zip(config["block_out_channels"], attention) if a] + [config["block_out_channels"][-1]]
    if d is not None and any(c % d for c in widths):
        raise ValueError(f"{kind}: attention_head_dim={d} does not divide the attention widths {widths}")
    args.update(_heads([(c, 1 if d is None else c // d) for c in widths], kind, "attention_head_dim"))
    groups = config.get("attn_norm_num_groups")
    if groups is None and args["scale_shift_norm"] or groups not in (None, args["norm_groups"]):
        raise ValueError(f"{kind}: attn_norm_num_groups={groups!r} with resnet_time_scale_shift "
                         f"{config.get('resnet_time_scale_shift')!r}: the middle block's attention GroupNorm "
                         "must have norm_num_groups groups (None with scale_shift means no GroupNorm)")
    return UNetConfig(**args)


def _from_condition(config: Mapping, kind: str, attention: list[bool]) -> UNetConfig:
    args, heads = _common(config, kind, attention), config.get("attention_head_dim", 8)
    widths = list(config["block_out_channels"])
    heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * len(widths)
    sites = [(c, h) for c, h, a in zip(widths, heads, attention) if a] + [(widths[-1], heads[-1])]
    args.update(_heads(sites, kind, "attention_head_dim"))
    for key, wanted in (("transformer_layers_per_block", 1), ("only_cross_attention", False)):
        value = config.get(key, wanted)
        if any(v != wanted for v in (value if isinstance(value, (list, tuple)) else [value])):
            raise ValueError(f"{kind}: {key}={value!r} has no counterpart in latentdiff's U-Net (it has {wanted})")
    return UNetConfig(**args, context_dim=_one(config.get("cross_attention_dim", 1280), "cross_attention_dim", kind),
                      transformer=True, null_token=False, transformer_norm_eps=1e-6,
                      linear_projection=bool(config.get("use_linear_projection", False)))


def config_from_diffusers(config: Mapping) -> UNetConfig:
    """A diffusers U-Net config dict (``_class_name`` UNet2DModel or UNet2DConditionModel) -> ours."""
    kind = config.get("_class_name")
    if kind not in _FIXED:
        raise ValueError(f"diffusers _class_name {kind!r} does not convert; latentdiff maps {sorted(_FIXED)} "
                         "(a model object's config has no _class_name: interop.unet.unet_from_diffusers_model)")
    _refuse_options(config, kind)
    attention = _attention_levels(config, kind)
    return (_from_unet2d if kind == "UNet2DModel" else _from_condition)(config, kind, attention)


def _heads_or_one(channels: int, cfg: UNetConfig) -> int:
    """Our head count at this width; 1 where it has none (a level without attention, which ignores it)."""
    try:
        return head_count(channels, cfg.num_heads, cfg.head_dim)
    except ValueError:
        return 1


def config_to_diffusers(cfg: UNetConfig, out_channels: int) -> dict:
    """Our config -> a diffusers config dict: ``UNet2DConditionModel`` for a text U-Net, else ``UNet2DModel``
    (the caller has checked that diffusers can hold it: ``interop.unet.check_representable``)."""
    lv, text = levels(cfg), bool(cfg.context_dim)
    kind = "UNet2DConditionModel" if text else "UNet2DModel"
    attn_down, attn_up = _BLOCKS[kind]
    heads = [_heads_or_one(c, cfg) for c, _ in lv]  # the last level's is the middle block's too
    shift = int(cfg.freq_shift) if float(cfg.freq_shift).is_integer() else cfg.freq_shift
    out = {"_class_name": kind, "_diffusers_version": DIFFUSERS_VERSION, "sample_size": cfg.image_size,
           "in_channels": cfg.in_channels, "out_channels": out_channels, "flip_sin_to_cos": True, "freq_shift": shift,
           "block_out_channels": [c for c, _ in lv], "layers_per_block": cfg.num_res_blocks,
           "down_block_types": [attn_down if a else "DownBlock2D" for _, a in lv],
           "up_block_types": [attn_up if a else "UpBlock2D" for _, a in reversed(lv)],
           "downsample_padding": 0 if cfg.asymmetric_downsample else 1, "dropout": cfg.dropout, "act_fn": "silu",
           "norm_num_groups": cfg.norm_groups, "norm_eps": cfg.norm_eps, "center_input_sample": False,
           "resnet_time_scale_shift": "scale_shift" if cfg.scale_shift_norm else "default"}
    if text:
        return out | {"mid_block_type": "UNetMidBlock2DCrossAttn", "cross_attention_dim": cfg.context_dim,
                      "attention_head_dim": heads[0] if len(set(heads)) == 1 else heads,
                      "use_linear_projection": cfg.linear_projection, "transformer_layers_per_block": 1}
    sites = [(c, h) for (c, a), h in zip(lv, heads) if a] + [(lv[-1][0], heads[-1])]
    if len({c // h for c, h in sites}) > 1 and len({h for _, h in sites}) > 1:
        raise ValueError(f"model.num_heads={cfg.num_heads!r} gives (width, heads) {sites}: diffusers' UNet2DModel "
                         "takes one head width (attention_head_dim) or one head")
    dim = None if all(h == 1 for _, h in sites) else sites[0][0] // sites[0][1]
    return out | {"mid_block_type": "UNetMidBlock2D", "attention_head_dim": dim, "add_attention": True,
                  "attn_norm_num_groups": cfg.norm_groups}


def config_from_ldm(state: Mapping[str, torch.Tensor]) -> UNetConfig:
    """Our config read off an original Stable Diffusion U-Net's tensors (prefix stripped): widths,
    levels, res blocks per level, attention levels, context width, conv or linear projections,
    scale-shift norm. Not in the weights: the heads (8 for a 768-wide context, as v1-inference.yaml;
    64 channels per head for 1024, as SD 2.x's num_head_channels 64; other widths raise) and the
    nominal ``image_size`` (8 x 2^(levels - 1): 64 for Stable Diffusion)."""
    def shape(key: str) -> torch.Size:
        if key not in state:
            raise LayoutError(f"LDM U-Net: the checkpoint has no key {key!r}")
        return state[key].shape
    ch, in_ch = shape("input_blocks.0.0.weight")[:2]
    last = max(int(k.split(".")[1]) for k in state if k.startswith("input_blocks."))
    downs = [i for i in range(1, last + 1) if f"input_blocks.{i}.0.op.weight" in state]
    n = (last - len(downs)) // (len(downs) + 1)
    if n < 1 or downs != [(n + 1) * (k + 1) for k in range(len(downs))] or last != (n + 1) * len(downs) + n:
        raise LayoutError(f"LDM U-Net: input_blocks 1..{last} with downsamplers at {downs} are not levels of "
                          "equally many res blocks")
    firsts = [1 + (n + 1) * k for k in range(len(downs) + 1)]
    widths = [shape(f"input_blocks.{i}.0.out_layers.3.weight")[0] for i in firsts]
    context = shape("middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1]
    rule = {768: dict(num_heads=8, head_dim=None), 1024: dict(num_heads=None, head_dim=64)}
    if context not in rule or any(w % ch for w in widths):
        raise ValueError(f"LDM U-Net: cannot infer the heads for a {context}-wide context (the original configs: "
                         "768 -> 8 heads, 1024 -> 64 channels per head); pass cfg")
    size = 8 * 2 ** len(downs)
    return UNetConfig(image_size=size, in_channels=in_ch, out_channels=shape("out.2.weight")[0], channels=ch,
                      channel_mult=tuple(w // ch for w in widths), num_res_blocks=n, dropout=0.0,
                      attention_resolutions=tuple(size // 2 ** k for k, i in enumerate(firsts)
                                                  if f"input_blocks.{i}.1.proj_in.weight" in state),
                      scale_shift_norm=shape("input_blocks.1.0.emb_layers.1.weight")[0] == 2 * widths[0],
                      norm_groups=32, context_dim=context, transformer=True, null_token=False,
                      transformer_norm_eps=1e-6, linear_projection=len(shape("middle_block.1.proj_in.weight")) == 2,
                      **rule[context])
