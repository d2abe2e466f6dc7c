"""ControlNet checkpoints of diffusers (``ControlNetModel``) and of the original ControlNet code (the
keys under ``control_model.``) to and from ``nn.controlnet.ControlNet``.

The trainable copy (time embedding, conv_in, down blocks, middle block) is the U-Net's encoder half
and takes its correspondence from ``interop.unet.unet_pairs(cfg, layout, part="encoder")``: the same
names in ``ControlNetModel`` as in ``UNet2DConditionModel``, and in the original ControlNet as in the
original U-Net. What is the ControlNet's own:

    ours                  diffusers                                  original (control_model.)
    hint.net.0            controlnet_cond_embedding.conv_in          input_hint_block.0
    hint.net.{2+4i}       controlnet_cond_embedding.blocks.{2i}      input_hint_block.{2+4i}     w_i -> w_i
    hint.net.{4+4i}       controlnet_cond_embedding.blocks.{2i+1}    input_hint_block.{4+4i}     w_i -> w_{i+1}, /2
    hint.net.{2+4n}       controlnet_cond_embedding.conv_out         input_hint_block.{2+4n}     zero, -> channels
    zero_convs.{k}        controlnet_down_blocks.{k}                 zero_convs.{k}.0            one per skip
    zero_middle           controlnet_mid_block                       middle_block_out.0

The maths is the same: the embedded condition is added after conv_in, skip k's residual is the k-th
zero convolution of the k-th skip (conv_in's output first), the middle residual is the zero
convolution of the middle block's output. Where the options differ:

* ``conditioning_scale`` (one float) is ``ControlledUNet``'s ``control_scale`` (B, K) filled with it.
* ``controlnet_conditioning_channel_order="bgr"`` flips the control's channels before the embedding:
  imported exactly as the first hint convolution with its input channels flipped (exported as "rgb").
* guess mode: diffusers weighs the n residuals by 10^(-(n-1-k)/(n-1)) (k = 0 shallowest, the middle
  one 1); ours by 0.825^(n-1-k), the original ControlNet's. For Stable Diffusion's n = 13 the two
  decays are 0.825 and 10^(-1/12) = 0.8254; ``guess_mode_weights(n, 10 ** (-1 / (n - 1)))`` is
  diffusers' exactly. It is a sampling option, not a weight, so nothing converts.
* ``global_pool_conditions`` (residuals averaged over space) has no counterpart and is refused, as
  is anything the U-Net map refuses (interop.unet.check_representable), by name.
* ``ControlNetModel`` has no ``sample_size``; our config needs the base U-Net's input side (its
  attention resolutions are by feature-map side): give ``sample_size``, else the config's, else the
  U-Net map's nominal 8 x 2^(levels - 1) (64 for Stable Diffusion). Export writes none.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import torch

from latentdiff.interop.keys import LayoutError, StrictReader, check_like
from latentdiff.interop.unet import DIFFUSERS_VERSION, LAYOUTS, Pair, sin_cos_swapped, unet_pairs
from latentdiff.nn.controlnet import ControlNet, ControlNetConfig
from latentdiff.nn.unet import UNetConfig

_NAMES = {
    "diffusers": dict(hint_in="controlnet_cond_embedding.conv_in", hint_block="controlnet_cond_embedding.blocks.{j}",
                      hint_out="controlnet_cond_embedding.conv_out", zero="controlnet_down_blocks.{k}",
                      zero_middle="controlnet_mid_block"),
    "ldm": dict(hint_in="input_hint_block.0", hint_block="input_hint_block.{m}", hint_out="input_hint_block.{m}",
                zero="zero_convs.{k}.0", zero_middle="middle_block_out.0"),
}
# ControlNetModel's config keys that are UNet2DConditionModel's too (they describe the copied half)
_SHARED_KEYS = ("in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "mid_block_type",
                "only_cross_attention", "block_out_channels", "layers_per_block", "downsample_padding",
                "mid_block_scale_factor", "act_fn", "norm_num_groups", "norm_eps", "cross_attention_dim",
                "transformer_layers_per_block", "encoder_hid_dim", "encoder_hid_dim_type", "attention_head_dim",
                "num_attention_heads", "use_linear_projection", "class_embed_type", "addition_embed_type",
                "addition_time_embed_dim", "num_class_embeds", "upcast_attention", "resnet_time_scale_shift",
                "projection_class_embeddings_input_dim", "addition_embed_type_num_heads")
_OWN_KEYS = ("conditioning_channels", "controlnet_conditioning_channel_order", "conditioning_embedding_out_channels",
             "global_pool_conditions")
_UP_BLOCK = {"CrossAttnDownBlock2D": "CrossAttnUpBlock2D", "DownBlock2D": "UpBlock2D"}
_HINT_IN = "controlnet_cond_embedding.conv_in.weight"


def _param(ours: str, theirs: str) -> Iterator[Pair]:
    for n in ("weight", "bias"):
        yield Pair(f"{ours}.{n}", (f"{theirs}.{n}",))


def controlnet_pairs(unet_cfg: UNetConfig, cfg: ControlNetConfig, layout: str = "diffusers") -> Iterator[Pair]:
    """The correspondence of our ``ControlNet(unet_cfg, cfg)`` state dict with ``layout``'s
    ("diffusers": ``ControlNetModel``; "ldm": the original ControlNet without its ``control_model.``
    prefix): one ``interop.unet.Pair`` per tensor of ours. Refuses (ValueError) what ``layout``
    cannot hold, naming the field."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown ControlNet layout {layout!r}; known: {LAYOUTS}")
    if not unet_cfg.context_dim:
        raise ValueError(f"model.context_dim={unet_cfg.context_dim} has no counterpart in a {layout} ControlNet: "
                         "it is the text U-Net's (cross-attention) encoder copy")
    names = _NAMES[layout]
    yield from unet_pairs(unet_cfg, layout, part="encoder")
    n = len(cfg.widths(unet_cfg.image_size // unet_cfg.patch_size)) - 1
    yield from _param("hint.net.0", names["hint_in"])
    for m in range(2, 2 + 4 * n, 2):  # our Sequential index of every inner convolution
        yield from _param(f"hint.net.{m}", names["hint_block"].format(j=m // 2 - 1, m=m))
    yield from _param(f"hint.net.{2 + 4 * n}", names["hint_out"].format(m=2 + 4 * n))
    with torch.device("meta"):
        skips = len(ControlNet(unet_cfg, cfg).zero_convs)
    for k in range(skips):
        yield from _param(f"zero_convs.{k}", names["zero"].format(k=k))
    yield from _param("zero_middle", names["zero_middle"])


def _check_shapes(state: Mapping[str, torch.Tensor], unet_cfg: UNetConfig, cfg: ControlNetConfig, name: str) -> None:
    """Raise LayoutError unless ``state`` has exactly the keys and shapes of ``ControlNet(unet_cfg, cfg)``."""
    check_like(state, lambda: ControlNet(unet_cfg, cfg), name, "ControlNet")


def import_state(unet_cfg: UNetConfig, cfg: ControlNetConfig, state: Mapping[str, torch.Tensor], layout: str,
                 name: str) -> dict:
    """Their state dict -> ours for ``ControlNet(unet_cfg, cfg)``: every key of ``state`` placed and every
    tensor of ours filled with its shape, else LayoutError naming the keys."""
    reader = StrictReader(state, name)
    out = {p.ours: p.to_ours([reader[k] for k in p.theirs]) for p in controlnet_pairs(unet_cfg, cfg, layout)}
    reader.finish()
    _check_shapes(out, unet_cfg, cfg, name)
    return out


def export_state(unet_cfg: UNetConfig, cfg: ControlNetConfig, state: Mapping[str, torch.Tensor],
                 layout: str) -> dict:
    """Our ``ControlNet(unet_cfg, cfg)`` state dict -> ``layout``'s (the keys and shapes checked first)."""
    _check_shapes(state, unet_cfg, cfg, "latentdiff ControlNet")
    reader, out = StrictReader(state, "latentdiff ControlNet"), {}
    for p in controlnet_pairs(unet_cfg, cfg, layout):
        out.update(zip(p.theirs, p.to_theirs(reader[p.ours])))
    reader.finish()
    return out


def _unet_config(config: Mapping, sample_size: int | None) -> UNetConfig:
    """The ``UNet2DConditionModel`` config whose encoder half a ``ControlNetModel`` config describes (its
    up blocks mirror the down blocks; they are not read)."""
    from latentdiff.interop.unet_config import config_from_diffusers
    unknown = sorted(set(config) - set(_SHARED_KEYS) - set(_OWN_KEYS) - {"sample_size"} - {"_class_name"}
                     - {k for k in config if k.startswith("_")})
    if unknown:
        raise ValueError(f"diffusers ControlNetModel: config keys {unknown} are not known here "
                         f"(diffusers {DIFFUSERS_VERSION}'s ControlNetModel has none of them)")
    down = list(config.get("down_block_types", ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)))
    bad = [b for b in down if b not in _UP_BLOCK]
    if bad:
        raise ValueError(f"diffusers ControlNetModel: down_block_types {bad} do not convert; "
                         f"known: {sorted(_UP_BLOCK)}")
    unet = {k: config[k] for k in _SHARED_KEYS if k in config}
    unet |= {"_class_name": "UNet2DConditionModel", "out_channels": unet.get("in_channels", 4),
             "down_block_types": down, "up_block_types": [_UP_BLOCK[b] for b in reversed(down)]}
    size = sample_size or config.get("sample_size")
    return config_from_diffusers(unet if size is None else unet | {"sample_size": size})


def _own_options(config: Mapping) -> tuple[tuple[int, ...], bool]:
    """The hint encoder's widths and whether the control is read as BGR; refuses the rest by name."""
    if config.get("_class_name", "ControlNetModel") != "ControlNetModel":
        raise ValueError(f"config _class_name {config['_class_name']!r} is not a diffusers ControlNetModel")
    if config.get("global_pool_conditions", False):
        raise ValueError("diffusers ControlNetModel: global_pool_conditions=True (residuals averaged over space) "
                         "has no counterpart in latentdiff's ControlNet")
    order = config.get("controlnet_conditioning_channel_order", "rgb")
    if order not in ("rgb", "bgr"):
        raise ValueError(f"diffusers ControlNetModel: controlnet_conditioning_channel_order {order!r} is neither "
                         "'rgb' nor 'bgr'")
    widths = config.get("conditioning_embedding_out_channels", (16, 32, 96, 256))
    if not widths:
        raise ValueError(f"diffusers ControlNetModel: conditioning_embedding_out_channels {widths!r} must list "
                         "the condition embedding's widths")
    return tuple(widths), order == "bgr"


def controlnet_from_diffusers(config: Mapping, state: Mapping[str, torch.Tensor], sample_size: int | None = None
                              ) -> tuple[UNetConfig, ControlNetConfig, dict]:
    """A diffusers ``ControlNetModel`` (its config.json as a dict, its state dict) -> (the base U-Net's
    config, our ControlNet config, our ``ControlNet`` state dict).

    ``sample_size``: the base U-Net's input side in latents (diffusers keeps it in the U-Net's config
    only; default the config's ``sample_size`` if it has one, else the U-Net map's nominal
    8 x 2^(levels - 1), 64 for Stable Diffusion): give the base's, so that ``ControlNet.check_base``
    accepts it. The control it reads is (B, conditioning_channels, S, S), values in [0, 1], with
    S = sample_size * 2^(len(conditioning_embedding_out_channels) - 1). Options without a counterpart
    raise ValueError naming them; keys that do not fit raise LayoutError naming them."""
    widths, bgr = _own_options(config)
    unet_cfg = _unet_config(config, sample_size)
    cfg = ControlNetConfig(control_channels=config.get("conditioning_channels", 3), hint_channels=widths[0],
                           control_size=unet_cfg.image_size * 2 ** (len(widths) - 1), hint_widths=widths)
    state = dict(state)
    if bgr and _HINT_IN in state:  # conv(flip(x), W) = conv(x, W flipped on its input channels)
        state[_HINT_IN] = state[_HINT_IN].flip(1)
    time_key = "time_embedding.linear_1.weight"
    if not config.get("flip_sin_to_cos", True) and time_key in state:  # [sin, cos] read by our [cos, sin]
        state[time_key] = sin_cos_swapped(state[time_key])
    return unet_cfg, cfg, import_state(unet_cfg, cfg, state, "diffusers", "diffusers ControlNetModel")


def controlnet_to_diffusers(unet_cfg: UNetConfig, cfg: ControlNetConfig, state: Mapping[str, torch.Tensor]
                            ) -> tuple[dict, dict]:
    """Our base U-Net config, ControlNet config and ``ControlNet`` state dict -> (a ``ControlNetModel``
    config dict with ``_class_name`` and ``_diffusers_version``, which ``ControlNetModel.from_config``
    builds, and its state dict). Features without a diffusers counterpart raise ValueError naming
    the field; a state dict that does not fit raises LayoutError naming the keys."""
    from latentdiff.interop.unet_config import config_to_diffusers
    theirs = export_state(unet_cfg, cfg, state, "diffusers")
    unet = config_to_diffusers(unet_cfg, unet_cfg.out_channels or unet_cfg.in_channels)
    config = {k: unet[k] for k in _SHARED_KEYS if k in unet}
    config |= {"_class_name": "ControlNetModel", "_diffusers_version": DIFFUSERS_VERSION,
               "conditioning_channels": cfg.control_channels, "controlnet_conditioning_channel_order": "rgb",
               "conditioning_embedding_out_channels": list(cfg.widths(unet_cfg.image_size // unet_cfg.patch_size)),
               "global_pool_conditions": False}
    return config, theirs


def _hint_from_ldm(state: Mapping[str, torch.Tensor]) -> tuple[int, tuple[int, ...]]:
    """(control channels, hint widths) read off ``input_hint_block``'s convolutions (indices 0, 2, ...,
    2 + 4n: the first, then two per halving, then the zero one)."""
    found = sorted(int(k.split(".")[1]) for k in state if k.startswith("input_hint_block.") and k.endswith(".weight"))
    n = (found[-1] - 2) // 4 if found else -1
    if n < 0 or found != list(range(0, 2 + 4 * n + 1, 2)):
        raise LayoutError(f"original ControlNet: input_hint_block convolutions at {found} are not 0, 2, ..., 2 + 4n "
                          "(a first convolution, two per halving and the zero convolution)")
    weights = [state[f"input_hint_block.{m}.weight"] for m in [0, *range(4, 4 + 4 * n, 4)]]
    return weights[0].shape[1], tuple(w.shape[0] for w in weights)


def controlnet_from_ldm(state: Mapping[str, torch.Tensor], unet_cfg: UNetConfig, prefix: str = "control_model."
                        ) -> tuple[UNetConfig, ControlNetConfig, dict]:
    """An original ControlNet state dict (lllyasviel's ``cldm``: ``input_hint_block``, ``zero_convs``,
    ``middle_block_out`` and the copied encoder's ``time_embed``, ``input_blocks``, ``middle_block``;
    keys under ``prefix`` or bare) -> (``unet_cfg``, our ControlNet config, our state dict).

    ``unet_cfg``: the base U-Net's config (e.g. from ``interop.unet.unet_from_ldm``): the encoder's
    heads and sides are not in its weights. The control channels and the hint widths are read off
    ``input_hint_block``; the control is (B, C, S, S) with S = the U-Net's side x 2^halvings. Keys
    outside the ControlNet (a full cldm file's ``model.diffusion_model.`` ones) raise LayoutError
    naming them."""
    if any(k.startswith(prefix) for k in state):
        outside = sorted(k for k in state if not k.startswith(prefix))
        if outside:
            raise LayoutError(f"original ControlNet: {len(outside)} key(s) outside {prefix!r} could not be placed: "
                              f"{', '.join(outside[:12])} (split a full checkpoint into its parts first)")
        state = {k[len(prefix):]: v for k, v in state.items()}
    channels, widths = _hint_from_ldm(state)
    resolution = unet_cfg.image_size // unet_cfg.patch_size
    cfg = ControlNetConfig(control_channels=channels, control_size=resolution * 2 ** (len(widths) - 1),
                           hint_channels=widths[0], hint_widths=widths)
    return unet_cfg, cfg, import_state(unet_cfg, cfg, state, "ldm", "original ControlNet")


def controlnet_to_ldm(unet_cfg: UNetConfig, cfg: ControlNetConfig, state: Mapping[str, torch.Tensor],
                      prefix: str = "control_model.") -> dict:
    """Our base U-Net config, ControlNet config and ``ControlNet`` state dict -> the original ControlNet
    state dict, its keys under ``prefix`` ("" for bare keys). Refuses what the layout cannot hold
    (interop.unet.check_representable's "ldm" rules: 32 GroupNorm groups, ...) by name."""
    return {prefix + k: v for k, v in export_state(unet_cfg, cfg, state, "ldm").items()}
