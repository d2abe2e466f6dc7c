"""U-Net checkpoints of diffusers (``UNet2DModel``, ``UNet2DConditionModel``) and of the original Stable
Diffusion / LDM code (the keys under ``model.diffusion_model.``) to and from ``nn.unet.UNet``.

The key correspondence is written once, :func:`unet_pairs`: for a ``UNetConfig`` and a layout it yields
one :class:`Pair` per tensor of ours, and both directions of both layouts run through it (i: our down or
up block, l: resolution level, r: block within the level, L: levels):

    ours                          diffusers                                 LDM
    time_embed.mlp.{0,2}          time_embedding.linear_{1,2}               time_embed.{0,2}
    conv_in                       conv_in                                   input_blocks.0.0
    down.{i}.0 / .1               down_blocks.{l}.resnets.{r} / attentions.{r}   input_blocks.{i+1}.0 / .1
    down.{i}.0.conv (downsample)  down_blocks.{l}.downsamplers.0.conv       input_blocks.{i+1}.0.op
    middle.{0,1,2}                mid_block.resnets.0, attentions.0, resnets.1   middle_block.{0,1,2}
    up.{i}.0 / .1                 up_blocks.{L-1-l}.resnets.{r} / attentions.{r}  output_blocks.{i}.0 / .1
    up.{i}.{1,2}.conv (upsample)  up_blocks.{L-1-l}.upsamplers.0.conv       output_blocks.{i}.{1,2}.conv
    norm_out, conv_out            conv_norm_out, conv_out                   out.0, out.2
    ResBlock norm1 conv1 emb norm2 conv2 skip = norm1 conv1 time_emb_proj norm2 conv2 conv_shortcut
                                              = in_layers.0 in_layers.2 emb_layers.1 out_layers.0 out_layers.3
                                                skip_connection
    SpatialTransformer: norm, proj_in, proj_out, block.norm{1,2,3} (= transformer_blocks.0.norm{1,2,3}),
        block.qkv = attn1.to_{q,k,v}, block.self_out = attn1.to_out.0, block.q = attn2.to_q,
        block.kv = attn2.to_{k,v}, block.cross_out = attn2.to_out.0, block.ff.proj_in / proj_out =
        ff.net.0.proj / ff.net.2, the same in diffusers and LDM
    SelfAttention2d (UNet2DModel): norm = group_norm, qkv = to_{q,k,v}, proj = to_out.0

Where the layouts differ beyond names (``Pair`` says which):

* q, k, v are three Linears in theirs; ours fuses them (``qkv``, and ``kv`` for cross-attention):
  concatenated on the output dimension.
* diffusers' ``UNet2DModel`` attention projects with Linears; ours (``SelfAttention2d``) with 1x1
  convolutions: (O, I) <-> (O, I, 1, 1).
* ``flip_sin_to_cos=False`` (sin before cos, as google's DDPM checkpoints) is our cos-first embedding
  with the two halves of the time MLP's first Linear's columns swapped.

Maps are exact: every source key is placed and every target key filled (``interop.keys``, errors name
the keys), the result's shapes are those of the model it is for, and every option that changes the
maths without a counterpart is refused by name (tests/test_interop_unet.py checks outputs within 1e-5).
The LDM layout is the Stable Diffusion U-Net (transformer layers with cross-attention); the caller
strips or adds the ``model.diffusion_model.`` prefix.
"""

from __future__ import annotations

import json
import os
from typing import Iterator, Mapping, NamedTuple

import torch

from latentdiff.interop.keys import StrictReader, check_like
from latentdiff.interop.unet_config import (DIFFUSERS_VERSION, config_from_diffusers, config_from_ldm,
                                           config_to_diffusers, levels)
from latentdiff.nn.unet import UNet, UNetConfig

__all__ = ["DIFFUSERS_VERSION", "LAYOUTS", "Pair", "check_representable", "export_state", "import_state",
           "save_diffusers_folder", "sin_cos_swapped", "unet_from_diffusers", "unet_from_diffusers_model",
           "unet_from_ldm", "unet_pairs", "unet_to_diffusers", "unet_to_ldm"]
LAYOUTS = ("diffusers", "ldm")
_NAMES = {  # our module -> theirs; {level}: resolution level, {r}: block in it, {n}/{j}: LDM block index
    "diffusers": dict(time_1="time_embedding.linear_1", time_2="time_embedding.linear_2", conv_in="conv_in",
                      down_res="down_blocks.{level}.resnets.{r}", down_attn="down_blocks.{level}.attentions.{r}",
                      downsample="down_blocks.{level}.downsamplers.0.conv",
                      middle=("mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1"),
                      up_res="up_blocks.{block}.resnets.{r}", up_attn="up_blocks.{block}.attentions.{r}",
                      upsample="up_blocks.{block}.upsamplers.0.conv", norm_out="conv_norm_out", conv_out="conv_out",
                      resblock=("norm1", "conv1", "time_emb_proj", "norm2", "conv2", "conv_shortcut")),
    "ldm": dict(time_1="time_embed.0", time_2="time_embed.2", conv_in="input_blocks.0.0",
                down_res="input_blocks.{n}.0", down_attn="input_blocks.{n}.1", downsample="input_blocks.{n}.0.op",
                middle=("middle_block.0", "middle_block.1", "middle_block.2"),
                up_res="output_blocks.{j}.0", up_attn="output_blocks.{j}.1", upsample="output_blocks.{j}.{k}.conv",
                norm_out="out.0", conv_out="out.2",
                resblock=("in_layers.0", "in_layers.2", "emb_layers.1", "out_layers.0", "out_layers.3",
                          "skip_connection")),
}
_OUR_RESBLOCK = ("norm1", "conv1", "emb", "norm2", "conv2", "skip")


class Pair(NamedTuple):
    """One tensor of ours and the tensor(s) of theirs it is made of."""
    ours: str
    theirs: tuple[str, ...]   # several: concatenated on dim 0 in ours (fused q/k/v, k/v)
    conv: bool = False        # ours is a 1x1 conv weight (O, I, 1, 1), theirs Linear weight(s) (O, I)

    def to_ours(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        w = tensors[0] if len(tensors) == 1 else torch.cat(tensors)
        return w[..., None, None] if self.conv else w

    def to_theirs(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        w = tensor.flatten(1) if self.conv else tensor
        return [w] if len(self.theirs) == 1 else [c.clone() for c in w.chunk(len(self.theirs))]  # own storage each


def _param(ours: str, theirs: str, names=("weight", "bias")) -> Iterator[Pair]:
    for n in names:
        yield Pair(f"{ours}.{n}", (f"{theirs}.{n}",))


def _resblock(ours: str, theirs: str, layout: str, skip: bool) -> Iterator[Pair]:
    """ResBlock: norm1, conv1, emb, norm2, conv2 (and the 1x1 skip when the width changes)."""
    for a, b in zip(_OUR_RESBLOCK[:5 + skip], _NAMES[layout]["resblock"]):
        yield from _param(f"{ours}.{a}", f"{theirs}.{b}")


def _transformer(ours: str, theirs: str) -> Iterator[Pair]:
    """SpatialTransformer <-> Transformer2DModel (diffusers) / SpatialTransformer (LDM): the same names."""
    b, t = f"{ours}.block", f"{theirs}.transformer_blocks.0"
    yield from _param(f"{ours}.norm", f"{theirs}.norm")
    yield from _param(f"{ours}.proj_in", f"{theirs}.proj_in")
    yield Pair(f"{b}.qkv.weight", tuple(f"{t}.attn1.to_{x}.weight" for x in "qkv"))
    yield from _param(f"{b}.self_out", f"{t}.attn1.to_out.0")
    yield Pair(f"{b}.q.weight", (f"{t}.attn2.to_q.weight",))
    yield Pair(f"{b}.kv.weight", (f"{t}.attn2.to_k.weight", f"{t}.attn2.to_v.weight"))
    yield from _param(f"{b}.cross_out", f"{t}.attn2.to_out.0")
    for i in (1, 2, 3):
        yield from _param(f"{b}.norm{i}", f"{t}.norm{i}")
    yield from _param(f"{b}.ff.proj_in", f"{t}.ff.net.0.proj")
    yield from _param(f"{b}.ff.proj_out", f"{t}.ff.net.2")
    yield from _param(f"{ours}.proj_out", f"{theirs}.proj_out")


def _self_attention(ours: str, theirs: str) -> Iterator[Pair]:
    """SelfAttention2d <-> diffusers' ``Attention`` of UNet2DModel (group_norm, to_q/k/v, to_out.0)."""
    yield from _param(f"{ours}.norm", f"{theirs}.group_norm")
    yield Pair(f"{ours}.qkv.weight", tuple(f"{theirs}.to_{x}.weight" for x in "qkv"), conv=True)
    yield Pair(f"{ours}.qkv.bias", tuple(f"{theirs}.to_{x}.bias" for x in "qkv"))
    yield Pair(f"{ours}.proj.weight", (f"{theirs}.to_out.0.weight",), conv=True)
    yield Pair(f"{ours}.proj.bias", (f"{theirs}.to_out.0.bias",))


def _encoder_pairs(cfg: UNetConfig, layout: str) -> Iterator[Pair]:
    names, attend = _NAMES[layout], _transformer if cfg.transformer else _self_attention
    yield from _param("time_embed.mlp.0", names["time_1"])
    yield from _param("time_embed.mlp.2", names["time_2"])
    yield from _param("conv_in", names["conv_in"])
    i, width, lv = 0, cfg.channels, levels(cfg)
    for level, (out, attention) in enumerate(lv):
        for r in range(cfg.num_res_blocks):
            yield from _resblock(f"down.{i}.0", names["down_res"].format(level=level, r=r, n=i + 1), layout,
                                 width != out)
            if attention:
                yield from attend(f"down.{i}.1", names["down_attn"].format(level=level, r=r, n=i + 1))
            i, width = i + 1, out
        if level < len(lv) - 1:
            yield from _param(f"down.{i}.0.conv", names["downsample"].format(level=level, n=i + 1))
            i += 1
    yield from _resblock("middle.0", names["middle"][0], layout, False)
    yield from attend("middle.1", names["middle"][1])
    yield from _resblock("middle.2", names["middle"][2], layout, False)


def _decoder_pairs(cfg: UNetConfig, layout: str) -> Iterator[Pair]:
    names, attend, lv = _NAMES[layout], _transformer if cfg.transformer else _self_attention, levels(cfg)
    skips = [cfg.channels] + [w for k, (w, _) in enumerate(lv) for _ in range(cfg.num_res_blocks + (k < len(lv) - 1))]
    j, width = 0, lv[-1][0]
    for level in reversed(range(len(lv))):
        out, attention = lv[level]
        fmt = dict(block=len(lv) - 1 - level)
        for r in range(cfg.num_res_blocks + 1):
            fmt.update(r=r, j=j, k=1 + attention)
            yield from _resblock(f"up.{j}.0", names["up_res"].format(**fmt), layout, width + skips.pop() != out)
            if attention:
                yield from attend(f"up.{j}.1", names["up_attn"].format(**fmt))
            if level > 0 and r == cfg.num_res_blocks:
                yield from _param(f"up.{j}.{1 + attention}.conv", names["upsample"].format(**fmt))
            j, width = j + 1, out
    yield from _param("norm_out", names["norm_out"])
    yield from _param("conv_out", names["conv_out"])


def check_representable(cfg: UNetConfig, layout: str) -> None:
    """Raise ValueError naming the first ``UNetConfig`` field whose value ``layout`` cannot hold."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown U-Net layout {layout!r}; known: {LAYOUTS}")
    where = "diffusers" if layout == "diffusers" else "the original Stable Diffusion (LDM) layout"
    refusals = [
        ("patch_size", cfg.patch_size > 1, "no space-to-depth input"),
        ("low_res_channels", cfg.low_res_channels, "no super-resolution input"),
        ("image_embed_dim", cfg.image_embed_dim, "no unCLIP image embedding"),
        ("pooled_dim", cfg.pooled_dim, "no pooled text embedding"),
        ("num_classes", cfg.num_classes, "no class embedding with a null class"),
        ("null_token", cfg.context_dim and cfg.null_token, "their cross-attention sees the text alone, and our "
         "learned null token is a key in every softmax (even a zero one: logit 0, value 0)"),
        ("transformer", bool(cfg.context_dim) != cfg.transformer, "text U-Nets are transformer layers with "
         "cross-attention, the others plain self-attention"),
        ("norm_groups", any(w % cfg.norm_groups for w in (cfg.channels, *(w for w, _ in levels(cfg)))),
         "one GroupNorm group count that divides every width"),
        ("transformer_norm_eps", cfg.transformer and cfg.transformer_norm_eps != 1e-6,
         "the transformer layers' GroupNorm has eps 1e-6"),
    ]
    if layout == "ldm":
        refusals += [("context_dim", not cfg.context_dim, "the LDM layout here is the text U-Net's"),
                     ("norm_groups", cfg.norm_groups != 32, "GroupNorms have 32 groups"),
                     ("norm_eps", cfg.norm_eps != 1e-5, "GroupNorms have eps 1e-5"),
                     ("freq_shift", cfg.freq_shift, "the time embedding has no frequency shift"),
                     ("asymmetric_downsample", cfg.asymmetric_downsample, "downsampling pads every side")]
    for field, refused, why in refusals:
        if refused:
            raise ValueError(f"model.{field}={getattr(cfg, field)!r} has no counterpart in {where}: {why}")


def unet_pairs(cfg: UNetConfig, layout: str, part: str = "all") -> Iterator[Pair]:
    """The correspondence of our ``UNet`` state dict with ``layout``'s ("diffusers": ``UNet2DModel`` or
    ``UNet2DConditionModel`` keys; "ldm": the original Stable Diffusion keys without the
    ``model.diffusion_model.`` prefix): one :class:`Pair` per tensor of ours. ``part="encoder"``: the
    encoder half alone (time embedding, conv_in, down blocks, middle block; ``UNetEncoder``'s tensors
    but the null token), the part a ControlNet copies; "all" adds the decoder half and the output.
    Refuses (ValueError) configs ``layout`` cannot hold (:func:`check_representable`)."""
    check_representable(cfg, layout)
    if part not in ("all", "encoder"):
        raise ValueError(f"part must be 'all' or 'encoder', got {part!r}")
    yield from _encoder_pairs(cfg, layout)
    if part == "all":
        yield from _decoder_pairs(cfg, layout)


def _check_shapes(state: Mapping[str, torch.Tensor], cfg: UNetConfig, name: str) -> None:
    """Raise LayoutError unless ``state`` has exactly the keys and shapes of ``UNet(cfg)``."""
    check_like(state, lambda: UNet(cfg), name, "U-Net")


def import_state(cfg: UNetConfig, state: Mapping[str, torch.Tensor], layout: str, name: str) -> dict:
    """Their state dict -> ours for ``UNet(cfg)``: every key of ``state`` placed, every tensor of ours
    filled with its shape (else LayoutError naming the keys)."""
    reader = StrictReader(state, name)
    out = {p.ours: p.to_ours([reader[k] for k in p.theirs]) for p in unet_pairs(cfg, layout)}
    reader.finish()
    _check_shapes(out, cfg, name)
    return out


def export_state(cfg: UNetConfig, state: Mapping[str, torch.Tensor], layout: str) -> dict:
    """Our ``UNet(cfg)`` state dict -> ``layout``'s (the keys and shapes checked first)."""
    _check_shapes(state, cfg, "latentdiff UNet")
    reader, out = StrictReader(state, "latentdiff UNet"), {}
    for p in unet_pairs(cfg, layout):
        out.update(zip(p.theirs, p.to_theirs(reader[p.ours])))
    reader.finish()
    return out


def _as_built(cfg: UNetConfig, state: Mapping[str, torch.Tensor]) -> UNetConfig:
    """``cfg`` with the output width of ``state``: a learned-variance ``UNet`` has twice the channels."""
    out, w = cfg.out_channels or cfg.in_channels, state.get("conv_out.weight")
    return cfg.replace(out_channels=2 * out) if w is not None and w.shape[0] == 2 * out else cfg


def sin_cos_swapped(weight: torch.Tensor) -> torch.Tensor:
    """The time MLP's first Linear weight (E, C) with its column halves [0, C/2) and [C/2, C) swapped:
    diffusers' ``flip_sin_to_cos=False`` embedding [sin, cos] read by our [cos, sin] (an involution)."""
    half = weight.shape[1] // 2
    return torch.cat([weight[:, half:2 * half], weight[:, :half], weight[:, 2 * half:]], 1)


def unet_from_diffusers(config: Mapping, state: Mapping[str, torch.Tensor]) -> tuple[UNetConfig, dict]:
    """A diffusers ``UNet2DModel`` or ``UNet2DConditionModel`` (``config["_class_name"]``; its
    config.json as a dict and its state dict) -> (our config, our ``UNet`` state dict).

    ``UNet2DModel``: DDPM-style ``DownBlock2D`` / ``AttnDownBlock2D`` levels, ``UNetMidBlock2D``,
    resnet_time_scale_shift "default" or "scale_shift". ``UNet2DConditionModel``: Stable Diffusion
    1.x / 2.x (``CrossAttnDownBlock2D`` / ``DownBlock2D``, ``UNetMidBlock2DCrossAttn``, conv or linear
    projections, heads one count or one per level). The imported U-Net has no null token: give it
    text states (B, L, cross_attention_dim) for every sample. Options our U-Net cannot represent
    raise ValueError naming them (interop.unet_config)."""
    kind = config.get("_class_name")
    cfg = config_from_diffusers(config)
    if not config.get("flip_sin_to_cos", True):
        key = "time_embedding.linear_1.weight"
        state = {**state, key: sin_cos_swapped(state[key])} if key in state else state
    return cfg, import_state(cfg, state, "diffusers", f"diffusers {kind}")


def unet_from_diffusers_model(model: torch.nn.Module) -> tuple[UNetConfig, dict]:
    """:func:`unet_from_diffusers` of a diffusers U-Net object (its ``config`` lacks ``_class_name``)."""
    return unet_from_diffusers({**model.config, "_class_name": type(model).__name__}, model.state_dict())


def unet_to_diffusers(cfg: UNetConfig, state: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """Our config and ``UNet`` state dict -> (a diffusers config dict with ``_class_name``, which
    ``UNet2DModel`` / ``UNet2DConditionModel.from_config`` builds, and its state dict): a text U-Net
    (``context_dim`` > 0) becomes a ``UNet2DConditionModel``, the others a ``UNet2DModel``. Features
    without a diffusers counterpart raise ValueError naming the field: among them our learned null
    token (a text U-Net exports with ``null_token`` false only) and a transformer GroupNorm eps other
    than diffusers' fixed 1e-6 (``transformer_norm_eps``)."""
    check_representable(cfg, "diffusers")
    cfg = _as_built(cfg, state)
    return config_to_diffusers(cfg, cfg.out_channels or cfg.in_channels), export_state(cfg, state, "diffusers")


def unet_from_ldm(state: Mapping[str, torch.Tensor], cfg: UNetConfig | None = None) -> tuple[UNetConfig, dict]:
    """An original Stable Diffusion U-Net state dict (keys under ``model.diffusion_model.``, prefix
    stripped) -> (our config, our state dict). ``cfg`` None: inferred from the tensors' shapes
    (interop.unet_config.config_from_ldm: widths, levels, blocks per level, attention levels, context
    width, conv or linear projections); the heads are not in the weights and follow the original
    configs: 8 heads for a 768-wide context (v1-inference.yaml's num_heads 8), 64 channels per head for
    1024 (v2's num_head_channels 64); other widths need ``cfg``."""
    cfg = config_from_ldm(state) if cfg is None else cfg
    return cfg, import_state(cfg, state, "ldm", "LDM U-Net")


def unet_to_ldm(cfg: UNetConfig, state: Mapping[str, torch.Tensor]) -> dict:
    """Our config and ``UNet`` state dict -> the original Stable Diffusion U-Net state dict (no
    ``model.diffusion_model.`` prefix; add it for a single-file checkpoint)."""
    return export_state(_as_built(cfg, state), state, "ldm")


def save_diffusers_folder(folder: str, config: dict, state: Mapping[str, torch.Tensor]) -> None:
    """Write ``config.json`` and ``diffusion_pytorch_model.safetensors`` (diffusers' ``save_pretrained``
    layout, which ``from_pretrained(folder)`` loads), each to a temporary name first, then renamed."""
    from safetensors.torch import save_file
    os.makedirs(folder, exist_ok=True)
    weights, cfg_path = (os.path.join(folder, n) for n in ("diffusion_pytorch_model.safetensors", "config.json"))
    save_file({k: v.contiguous() for k, v in state.items()}, weights + ".tmp")
    with open(cfg_path + ".tmp", "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    os.replace(weights + ".tmp", weights)
    os.replace(cfg_path + ".tmp", cfg_path)
