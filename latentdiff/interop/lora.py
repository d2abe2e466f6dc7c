"""LoRA adapters (Hu et al. 2021) on latentdiff's denoisers, through ``peft``.

A LoRA adapter adds to a frozen layer W (a Linear, or a Conv2d) a low-rank update
W' = W + (alpha / r) B A, A (r, d_in) Gaussian-initialised, B (d_out, r) zero-initialised, so a new
adapter leaves the network's output exactly as it was (Hu et al. 2021, section 4.1). peft builds the
layers (``inject_adapter_in_model``); this module says which layers of a latentdiff backbone get
them (``target_modules``), moves their weights in and out (``adapter_state``, ``load_adapter_state``),
activates several at once with a scale each (``set_adapters``) and merges them into the weights
(``merge_adapters``).

Targets. ``attention``: every Linear / Conv2d projection of the attention layers: a U-Net's
``SelfAttention2d`` (qkv, proj) and ``CrossAttention2d`` (q, kv, proj) convolutions,
``TransformerBlock`` linears (qkv, self_out, q, kv, cross_out) of its ``SpatialTransformer`` layers,
and a DiT's / MMDiT's ``SelfAttention`` (qkv, out) and ``CrossAttention`` (q, kv, out) linears.
``attention+conv`` adds the ResBlocks' convolutions (conv1, conv2, a 1x1 skip).

Adapter tensors are saved under peft's own names without the adapter name
(``down.1.attn.qkv.lora_A.weight``), as ``get_peft_model_state_dict`` writes them. peft is imported
when first used (it takes seconds to import), so configs and presets load without it.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import nn

from latentdiff.config import Config
from latentdiff.io.checkpoint import state_fingerprint

TARGETS = ("attention", "attention+conv")


@dataclasses.dataclass(frozen=True)
class LoRAConfig(Config):
    """The adapters: rank r, alpha (the update is scaled by alpha / r), dropout on their input, and
    which layers get them (``attention`` or ``attention+conv``; see the module docstring)."""

    rank: int = 8                 # r, the rank of each update B A
    alpha: float = 8.0            # the update is scaled by alpha / rank
    dropout: float = 0.0          # dropout on the adapters' input while training
    targets: str = "attention"    # attention | attention+conv (also the ResBlocks' convolutions)

    def __post_init__(self):
        if not (isinstance(self.rank, int) and self.rank >= 1):
            raise ValueError(f"lora.rank must be an integer >= 1, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        if self.targets not in TARGETS:
            raise ValueError(f"lora.targets must be one of {', '.join(TARGETS)}, got {self.targets!r}")


def _attention_types() -> tuple[type, ...]:
    from latentdiff.nn.attention import CrossAttention2d, SelfAttention2d, TransformerBlock
    from latentdiff.nn.dit import CrossAttention, SelfAttention

    return SelfAttention2d, CrossAttention2d, TransformerBlock, SelfAttention, CrossAttention


def target_modules(net: nn.Module, targets: str = "attention") -> list[str]:
    """The full names of the layers of ``net`` that get adapters (sorted): the Linear / Conv2d children
    of its attention layers, and with ``attention+conv`` its ResBlocks' convolutions."""
    from latentdiff.nn.blocks import ResBlock

    kinds = _attention_types() + ((ResBlock,) if targets == "attention+conv" else ())
    names = []
    for name, module in net.named_modules():
        if isinstance(module, kinds):
            names += [f"{name}.{child}" for child, layer in module.named_children()  # a LoRA layer: its base's
                      if isinstance(getattr(layer, "base_layer", layer), (nn.Linear, nn.Conv2d))]
    if not names:
        raise ValueError(f"{type(net).__name__} has no layers for LoRA targets {targets!r} (no attention layers)")
    return sorted(names)


def peft_config(cfg: LoRAConfig, net: nn.Module):
    """peft's LoraConfig for ``cfg`` on ``net`` (explicit module names, B initialised to zero)."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=target_modules(net, cfg.targets), init_lora_weights=True, bias="none")


def base_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The base network's own state dict: adapter tensors left out, peft's ``.base_layer`` folded back."""
    return {k.replace(".base_layer.", "."): v for k, v in net.state_dict().items() if ".lora_" not in k}


def base_fingerprint(net: nn.Module) -> str:
    """``io.checkpoint.weights_fingerprint`` of the base weights of ``net``, with or without adapters on it."""
    return state_fingerprint(base_state(net))


def add_adapter(net: nn.Module, cfg: LoRAConfig, name: str = "default") -> nn.Module:
    """Inject adapter ``name`` (peft) into ``net`` in place; only its tensors are left trainable.
    Returns ``net``, whose output is unchanged until the adapter is trained (B = 0)."""
    from peft import inject_adapter_in_model

    with warnings.catch_warnings():  # a second adapter: peft warns that the model already has one
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        inject_adapter_in_model(peft_config(cfg, net), net, adapter_name=name)
    for param_name, param in net.named_parameters():
        param.requires_grad_(f".lora_A.{name}." in param_name or f".lora_B.{name}." in param_name)
    return net


def adapter_layers(net: nn.Module) -> list:
    """The peft LoRA layers of ``net`` (``peft.tuners.lora.LoraLayer``), in module order."""
    from peft.tuners.lora import LoraLayer

    return [m for m in net.modules() if isinstance(m, LoraLayer)]


def adapter_state(net: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """Adapter ``name``'s tensors alone, under peft's saved names (no adapter name in them)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(net, adapter_name=name)


def load_adapter_state(net: nn.Module, state: dict[str, torch.Tensor], name: str = "default") -> None:
    """Put ``state`` (as ``adapter_state`` gives it) into adapter ``name`` of ``net``; ValueError naming
    the keys when it does not fit exactly (missing or unexpected adapter tensors, other shapes)."""
    from peft import set_peft_model_state_dict

    want = set(adapter_state(net, name))
    missing, unexpected = sorted(want - set(state)), sorted(set(state) - want)
    if missing or unexpected:
        raise ValueError(f"the adapter tensors do not fit this network's adapter {name!r}: missing "
                         f"{missing[:3]}{' ...' if len(missing) > 3 else ''}, unexpected "
                         f"{unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
    try:
        set_peft_model_state_dict(net, state, adapter_name=name)
    except RuntimeError as err:  # a size mismatch
        raise ValueError(f"the adapter tensors do not fit this network's adapter {name!r}: {err}") from None


def set_adapters(net: nn.Module, scales: dict[str, float]) -> None:
    """Activate exactly the adapters named in ``scales`` (several are summed), each update scaled by
    ``scale * alpha / r`` (scale 0: that adapter has no effect); all frozen (inference)."""
    for layer in adapter_layers(net):
        layer.set_adapter([n for n in scales if n in layer.lora_A], inference_mode=True)
        for name, scale in scales.items():
            layer.set_scale(name, scale)


@torch.no_grad()
def merge_adapters(net: nn.Module) -> nn.Module:
    """Fold the active adapters into the base weights (W <- W + scale alpha / r B A) and remove every
    adapter layer, leaving the plain network (its state dict keys and forward as before LoRA)."""
    layers = set(map(id, adapter_layers(net)))
    for name, module in list(net.named_modules()):
        if id(module) in layers:
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent_name) if parent_name else net, child, module.get_base_layer())
    if hasattr(net, "peft_config"):
        del net.peft_config
    return net


class AdaptedNet(nn.Module):
    """A frozen backbone with a trainable adapter, as the trainer trains it: ``forward`` is the backbone's,
    and the state dict is the adapter's tensors alone (``adapter_state``), so checkpoints, EMA and resume
    hold only them."""

    def __init__(self, net: nn.Module, name: str = "default"):
        super().__init__()
        self.net, self.adapter = net, name

    def forward(self, *args, **kwargs):
        return self.net(*args, **kwargs)

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return adapter_state(self.net, self.adapter)

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True, assign: bool = False):
        load_adapter_state(self.net, state, self.adapter)


__all__ = ["AdaptedNet", "LoRAConfig", "TARGETS", "adapter_layers", "adapter_state", "add_adapter", "base_fingerprint",
           "base_state", "load_adapter_state", "merge_adapters", "peft_config", "set_adapters", "target_modules"]
