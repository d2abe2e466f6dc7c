"""diffusers' transformer denoisers in our layout: ``DiTTransformer2DModel`` -> ``nn.dit.DiT`` and
``SD3Transformer2DModel`` -> ``nn.mmdit.MMDiT``, from a diffusers config dict and state dict.

The maps are exact (tests/test_transformers.py checks equal outputs within 1e-5 in fp32). Where the
layouts differ:

* diffusers keeps q, k and v as three Linears; ours is one (``SelfAttention.qkv``): concatenated.
* diffusers' DiT gives every block its own copy of the time + class embedder (a port of the original
  DiT, which has one); ours has one. A checkpoint whose copies differ is refused.
* SD3's ``AdaLayerNormContinuous`` (the final layer, the last block's text stream) chunks its Linear
  as (scale, shift); ours as (shift, scale): the halves are swapped.
* SD3 crops its positions from a ``pos_embed_max_size`` grid; the crop is loaded into our buffer.
* diffusers' DiT embeds time with ``freq_shift`` 1 and puts eps 1e-5 on the norm before each MLP;
  the converted ``TransformerConfig`` says so.
"""

from __future__ import annotations

import torch

from latentdiff.nn.transformer import TransformerConfig
from latentdiff.nn.unet import UNetConfig


def _qkv(sd: dict, prefix: str, names=("to_q", "to_k", "to_v")) -> dict:
    return {f"{kind}": torch.cat([sd[f"{prefix}.{n}.{kind}"] for n in names]) for kind in ("weight", "bias")}


def _linear(sd: dict, src: str, dst: str, swap_halves: bool = False) -> dict:
    out = {}
    for kind in ("weight", "bias"):
        w = sd[f"{src}.{kind}"]
        out[f"{dst}.{kind}"] = torch.cat(w.chunk(2)[::-1]) if swap_halves else w
    return out


def _embedder(sd: dict, time: str, dst: str = "embed.time.mlp") -> dict:
    return {**_linear(sd, f"{time}.linear_1", f"{dst}.0"), **_linear(sd, f"{time}.linear_2", f"{dst}.2")}


def _mlp(sd: dict, src: str, dst: str) -> dict:
    return {**_linear(sd, f"{src}.net.0.proj", f"{dst}.fc1"), **_linear(sd, f"{src}.net.2", f"{dst}.fc2")}


def dit_from_diffusers(config: dict, sd: dict) -> tuple[UNetConfig, TransformerConfig, dict]:
    """A ``DiTTransformer2DModel``'s config and state dict -> (interface, sizes, our state dict)."""
    heads, depth, p = config["num_attention_heads"], config["num_layers"], config["patch_size"]
    dim = heads * config["attention_head_dim"]
    if config.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
        raise ValueError(f"only adaLN-Zero DiTs convert, got norm_type {config['norm_type']!r}")
    classes = sd["transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight"].shape[0] - 1
    model = UNetConfig(image_size=config["sample_size"], in_channels=config["in_channels"],
                       out_channels=config.get("out_channels") or config["in_channels"], num_classes=classes)
    cfg = TransformerConfig(kind="dit", patch_size=p, dim=dim, depth=depth, heads=heads, freq_shift=1.0,
                            ff_norm_eps=config.get("norm_eps", 1e-5))
    emb = "transformer_blocks.{}.norm1.emb"
    for i in range(1, depth):
        for key in [k for k in sd if k.startswith(emb.format(0) + ".")]:
            if not torch.equal(sd[key], sd[key.replace(emb.format(0), emb.format(i), 1)]):
                raise ValueError(f"block {i}'s time/class embedder differs from block 0's ({key}): our DiT has one")
    out = {"patch.proj.weight": sd["pos_embed.proj.weight"], "patch.proj.bias": sd["pos_embed.proj.bias"],
           "embed.classes.weight": sd[f"{emb.format(0)}.class_embedder.embedding_table.weight"],
           **_embedder(sd, f"{emb.format(0)}.timestep_embedder"),
           **_linear(sd, "proj_out_1", "final.ada.linear"), **_linear(sd, "proj_out_2", "final.linear")}
    for i in range(depth):
        b, o = f"transformer_blocks.{i}", f"blocks.{i}"
        out |= {f"{o}.attn.qkv.{k}": v for k, v in _qkv(sd, f"{b}.attn1").items()}
        out |= _linear(sd, f"{b}.attn1.to_out.0", f"{o}.attn.out") | _linear(sd, f"{b}.norm1.linear", f"{o}.ada.linear")
        out |= _mlp(sd, f"{b}.ff", f"{o}.mlp")
    return model, cfg, out


def mmdit_from_diffusers(config: dict, sd: dict) -> tuple[UNetConfig, TransformerConfig, dict]:
    """An ``SD3Transformer2DModel``'s config and state dict -> (interface, sizes, our state dict)."""
    heads, depth, p = config["num_attention_heads"], config["num_layers"], config["patch_size"]
    dim = heads * config["attention_head_dim"]
    if config.get("dual_attention_layers"):
        raise ValueError("SD3.5's dual-attention layers (MMDiT-X) do not convert")
    if config.get("qk_norm") not in (None, "rms_norm"):
        raise ValueError(f"only qk_norm None or 'rms_norm' converts, got {config['qk_norm']!r}")
    grid = config["sample_size"] // p
    model = UNetConfig(image_size=config["sample_size"], in_channels=config["in_channels"],
                       out_channels=config.get("out_channels") or config["in_channels"],
                       context_dim=config["joint_attention_dim"], pooled_dim=config["pooled_projection_dim"])
    cfg = TransformerConfig(kind="mmdit", patch_size=p, dim=dim, depth=depth, heads=heads,
                            qk_norm=config.get("qk_norm") == "rms_norm")
    m = config["pos_embed_max_size"]
    top = (m - grid) // 2
    pos = sd["pos_embed.pos_embed"].reshape(1, m, m, dim)[:, top:top + grid, top:top + grid].reshape(1, -1, dim)
    out = {"patch.pos": pos, "patch.proj.weight": sd["pos_embed.proj.weight"],
           "patch.proj.bias": sd["pos_embed.proj.bias"], **_embedder(sd, "time_text_embed.timestep_embedder"),
           **_embedder(sd, "time_text_embed.text_embedder", "embed.pooled"),
           **_linear(sd, "context_embedder", "context_embedder"),
           **_linear(sd, "norm_out.linear", "final.ada.linear", swap_halves=True),
           **_linear(sd, "proj_out", "final.linear")}
    for i in range(depth):
        b, o, last = f"transformer_blocks.{i}", f"blocks.{i}", i == depth - 1
        out |= {f"{o}.image.attn.qkv.{k}": v for k, v in _qkv(sd, f"{b}.attn").items()}
        out |= {f"{o}.text.attn.qkv.{k}": v for k, v in
                _qkv(sd, f"{b}.attn", ("add_q_proj", "add_k_proj", "add_v_proj")).items()}
        out |= _linear(sd, f"{b}.attn.to_out.0", f"{o}.image.attn.out")
        out |= _linear(sd, f"{b}.norm1.linear", f"{o}.image.ada.linear")
        out |= _linear(sd, f"{b}.norm1_context.linear", f"{o}.text.ada.linear", swap_halves=last)
        out |= _mlp(sd, f"{b}.ff", f"{o}.image.mlp")
        if not last:
            out |= _linear(sd, f"{b}.attn.to_add_out", f"{o}.text.attn.out")
            out |= _mlp(sd, f"{b}.ff_context", f"{o}.text.mlp")
        if cfg.qk_norm:
            for src, dst in (("norm_q", "image.attn.q_norm"), ("norm_k", "image.attn.k_norm"),
                             ("norm_added_q", "text.attn.q_norm"), ("norm_added_k", "text.attn.k_norm")):
                out[f"{o}.{dst}.norm.weight"] = sd[f"{b}.attn.{src}.weight"]
    return model, cfg, out
