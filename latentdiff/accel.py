"""Device placement and the speed options of a network, chosen by measurement (README, Performance).

Measured on the bench-S / bench-L U-Nets (DESIGN.md section 6) on a 2-core AVX-512 CPU:

* channels_last pays in fp32 (oneDNN's NHWC convolutions: bench-S forward 1.09x, bench-L
  training 1.2x) but not under bf16 autocast, where PyTorch's NHWC GroupNorm kernels are slow
  (GroupNorm + its backward went from ~5% to ~25% of a bench-S training step; bf16 training
  1.3x slower). So: channels_last on CUDA, and on CPU only for fp32.
* torch.compile: fuses the elementwise work around convolutions and attention. On that CPU it
  gave nothing measurable (bench-S forward: convolutions are ~75% of the time and already at
  the cores' peak; bench-L forward 1.08x) for ~45 s of compilation, so ``compile=None`` means
  on for CUDA only.
"""

from __future__ import annotations

import torch
from torch import nn

from latentdiff.training.train_config import resolve_mixed_precision


def default_compile(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def use_channels_last(device: torch.device | str, bf16: bool) -> bool:
    """channels_last where it paid: always on CUDA, on CPU for fp32 only (see the module docstring)."""
    return torch.device(device).type == "cuda" or not bf16


def prepare(net: nn.Module, device: torch.device | str = "cpu", *, bf16: bool = False,
            channels_last: bool | None = None, compile: bool | None = None,
            compile_mode: str | None = None) -> nn.Module:
    """Move ``net`` to ``device`` in place, in the memory format that is faster for it there
    (``channels_last`` None: ``use_channels_last``), compiled if ``compile`` (None: on CUDA only)
    with torch.compile's ``compile_mode`` ("reduce-overhead" replays CUDA graphs)."""
    net.to(device)
    fast_layout = use_channels_last(device, bf16) if channels_last is None else channels_last
    net.to(memory_format=torch.channels_last if fast_layout else torch.contiguous_format)
    if default_compile(device) if compile is None else compile:
        net.compile(mode=compile_mode)
    return net


def training_memory_format(mixed_precision: str, cpu: bool | None = None) -> torch.memory_format:
    """The faster memory format for a training run, with the Trainer's device (CUDA when available
    unless ``cpu``) and precision (``mixed_precision`` "auto" = bf16 on CUDA)."""
    use_cuda = torch.cuda.is_available() and not cpu
    bf16 = resolve_mixed_precision(mixed_precision, use_cuda) == "bf16"
    fast = use_channels_last("cuda" if use_cuda else "cpu", bf16)
    return torch.channels_last if fast else torch.contiguous_format
