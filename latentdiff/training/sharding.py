"""The process group's side of a training run: the ``Accelerator``, the effective batch size printed at
the start, gradient checkpointing, and FSDP (``train.fsdp``) for models that do not fit one device.

One process or many, started by ``torchrun`` (``--standalone``, or ``--nnodes N --node_rank R
--rdzv_backend c10d --rdzv_endpoint HOST:PORT`` across machines) or ``accelerate launch``: accelerate
reads the process group from the environment either way, so nothing here depends on the launcher.

FSDP is torch's FSDP2 (``torch.distributed.fsdp.fully_shard``; Zhao et al. 2023, "PyTorch FSDP"),
applied here directly rather than through accelerate's plugin, so that it is the same code on CPU/gloo
(where the tests run it) and CUDA/NCCL, whatever the launcher's config says:

* every rank starts from rank 0's weights (broadcast before sharding, as DDP does);
* each block (an element of an ``nn.ModuleList``: the U-Net's res and attention layers, the
  transformer blocks) is one FSDP unit, and the root holds the rest; parameters, gradients and
  AdamW's moments live as 1/world_size shards (``DTensor``) and are all-gathered per unit for its
  forward and backward;
* the EMA is sharded the same way (its update is shard-local), and a plain copy on the CPU receives
  its gathered weights for sampling and at the end of the run;
* checkpoints hold the full, unsharded state dict (gathered on every rank, written by rank 0 through
  ``io.checkpoint`` as ever) and AdamW's state keyed by parameter name, so a run resumes under FSDP
  with any process count, and its weights load anywhere as a plain model's.

Mixed precision under FSDP is FSDP's own policy (bf16 parameters for compute, fp32 gradient
reduction and master weights); fp16 is refused (it would need a sharded gradient scaler).
"""

from __future__ import annotations

import copy
import os
import warnings

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from torch import nn

from latentdiff.nn.blocks import set_grad_checkpointing
from latentdiff.training.ema import EMA
from latentdiff.training.train_config import TrainConfig, cpu_has_native_bf16, resolve_mixed_precision


def build_accelerator(cfg: TrainConfig, cpu: bool, unused_parameters: bool) -> Accelerator:
    """The run's ``Accelerator``. Under FSDP it does no mixed precision of its own (FSDP's policy does)."""
    use_cuda = not cpu and torch.cuda.is_available()
    precision = resolve_mixed_precision(cfg.mixed_precision, use_cuda)
    if precision == "bf16" and not use_cuda and not cpu_has_native_bf16():
        warnings.warn("train.mixed_precision=bf16 on a CPU without native bf16 (AVX512-BF16 / AMX) is emulated and "
                      "several times slower than fp32; train.mixed_precision=auto picks fp32 on CPU", stacklevel=2)
    if cfg.fsdp and precision == "fp16":
        raise ValueError("train.fsdp=true supports train.mixed_precision no or bf16, not fp16")
    return Accelerator(
        cpu=cpu,
        mixed_precision="no" if cfg.fsdp else precision,
        gradient_accumulation_steps=cfg.grad_accum,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=unused_parameters)],
    )


def describe_scale(acc: Accelerator, cfg: TrainConfig) -> str:
    """One line for the start of a run: the effective batch size and the learning rate."""
    effective = cfg.batch_size * acc.num_processes * cfg.grad_accum
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes))  # set by torchrun
    nodes = max(1, acc.num_processes // max(1, per_node))
    return (f"effective batch {effective} = {cfg.batch_size} per process x {acc.num_processes} processes x "
            f"{cfg.grad_accum} accumulation ({nodes} node(s), {acc.device.type}); "
            f"lr {cfg.lr:g} (peak, after {cfg.warmup_steps} warm-up steps); "
            f"fsdp {'on' if cfg.fsdp else 'off'}; grad checkpointing {'on' if cfg.grad_checkpointing else 'off'}")


def enable_grad_checkpointing(model: nn.Module, say) -> None:
    """``train.grad_checkpointing``: checkpoint every block of ``model``; says so when it has none."""
    if set_grad_checkpointing(model, True) == 0:
        say(f"train.grad_checkpointing: {type(model).__name__} has no U-Net or transformer blocks; nothing changes")


def broadcast_from_rank0(module: nn.Module, device: torch.device) -> None:
    """Every rank's parameters and buffers become rank 0's (in place), one tensor at a time through
    ``device`` (NCCL sends CUDA tensors only; the module itself may stay on the CPU until sharded)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        with torch.no_grad():
            for tensor in module.state_dict().values():
                sent = tensor.to(device)
                dist.broadcast(sent, src=0)
                tensor.copy_(sent)


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The modules that become one FSDP unit each, innermost first: every element of an
    ``nn.ModuleList`` that is not itself a list (U-Net res/attention layers, transformer blocks)."""
    units = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            units += [m for m in module if not isinstance(m, nn.ModuleList) and any(True for _ in m.parameters())]
    return units[::-1]


def fully_shard_model(model: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """Shard ``model`` in place over all processes (FSDP2): each of ``fsdp_units`` then the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy()
    if precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for unit in fsdp_units(model):
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def shard_for_training(model: nn.Module, ema: EMA, acc: Accelerator, cfg: TrainConfig) -> nn.Module:
    """Shard the model and its EMA (both already holding rank 0's weights); returns a plain CPU copy of
    the EMA module that receives the gathered EMA weights for sampling (``gather_into``)."""
    if not dist.is_initialized():
        raise ValueError("train.fsdp=true needs a process group: start the run with torchrun or accelerate launch")
    plain_ema = copy.deepcopy(ema.model).to("cpu")
    precision = resolve_mixed_precision(cfg.mixed_precision, acc.device.type == "cuda")
    fully_shard_model(model, acc.device, precision)
    fully_shard_model(ema.model, acc.device, precision)
    return plain_ema


def is_sharded(tensor: torch.Tensor) -> bool:
    return hasattr(tensor, "full_tensor")


def gathered_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of a sharded module, on the CPU, on every rank (one tensor
    all-gathered at a time; every rank must call this together)."""
    return {name: (value.full_tensor() if is_sharded(value) else value).detach().cpu()
            for name, value in module.state_dict().items()}


def gather_into(plain: nn.Module, sharded: nn.Module) -> nn.Module:
    """Load the gathered weights of ``sharded`` into its plain copy ``plain``; returns ``plain``."""
    plain.load_state_dict(gathered_state(sharded))
    return plain


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's full state keyed by parameter name (on rank 0; ``{}`` on the others)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Shard a full optimizer state saved by :func:`full_optimizer_state` (every rank passes it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def as_float(value) -> float:
    """A scalar tensor (maybe a replicated ``DTensor``, as FSDP's gradient norm is) as a float."""
    if is_sharded(value):
        value = value.full_tensor()
    return float(value)


def local_parameters(module: nn.Module) -> dict[str, torch.Tensor]:
    """This rank's shard of every parameter (the whole parameter when unsharded)."""
    return {name: p.to_local() if is_sharded(p) else p for name, p in module.named_parameters()}
