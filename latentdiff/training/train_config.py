"""The training loop's settings, checked when they are made (``--set`` values included)."""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

from latentdiff.config import Config

FLOAT32_MAX = 3.4028234663852886e38


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """Training-loop settings. ``batch_size`` is per process; steps count optimizer steps.

    ``on_nonfinite``: what a step with a non-finite loss or gradient does: ``stop`` (keep the last
    good checkpoint and exit with one line) or ``skip`` (drop that update, count it, go on).
    ``init_from``: a checkpoint whose weights (its EMA where it has one) start a fresh run.
    ``fsdp``: shard parameters, gradients and optimizer state over the processes (torch FSDP2,
    ``training.sharding``) for models that do not fit one device; checkpoints hold the full state.
    ``grad_checkpointing``: recompute each U-Net res/attention block's and each transformer block's
    activations in the backward pass (``nn.blocks.set_grad_checkpointing``): less memory, more time.
    Checkpoints written before these two existed resume with both false (``resume.ADDED_FIELDS``)."""

    batch_size: int = 64  # images per optimizer step, per process
    lr: float = 2e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_steps: int = 100  # linear learning-rate warm-up steps
    grad_clip: float = 1.0  # max global grad norm; <= 0 disables clipping
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 10000  # stop after this many optimizer steps
    max_minutes: float | None = None  # training-time budget, summed across resumes
    ema_decay: float = 0.999  # decay of the EMA weights used for sampling
    mixed_precision: str = "auto"  # "auto" (bf16 on CUDA, fp32 on CPU), "no", "bf16", "fp16"
    sample_every: int = 1000  # steps between sample grids in RUN/samples/
    checkpoint_every: int = 1000  # steps between checkpoints
    log_every: int = 25  # steps between lines of RUN/metrics.jsonl
    seed: int = 0  # seed of the run (initial weights, data order, noise)
    num_workers: int = 0  # data-loader worker processes (0: in the main process)
    on_nonfinite: str = "stop"  # non-finite loss or gradient: stop (keep the last good checkpoint) or skip
    init_from: str | None = None  # a checkpoint whose weights (its EMA where it has one) start a fresh run
    fsdp: bool = False  # shard the model over the processes (FSDP2); checkpoints hold the full state dict
    grad_checkpointing: bool = False  # recompute block activations in the backward pass (memory for time)

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "sample_every", "checkpoint_every", "log_every"):
            _require(name, getattr(self, name), lambda v: v >= 1, "an integer >= 1", int)
        for name in ("warmup_steps", "max_steps", "num_workers", "seed"):
            _require(name, getattr(self, name), lambda v: v >= 0, "an integer >= 0", int)
        _require("lr", self.lr, lambda v: 0 < v < FLOAT32_MAX, "a finite number > 0 (float32 range)")
        _require("weight_decay", self.weight_decay, lambda v: v >= 0, "a finite number >= 0")
        _require("grad_clip", self.grad_clip, lambda v: True, "a finite number (<= 0 disables clipping)")
        _require("ema_decay", self.ema_decay, lambda v: 0 <= v < 1, "a number in [0, 1)")
        if self.max_minutes is not None:
            _require("max_minutes", self.max_minutes, lambda v: v >= 0, "a number of minutes >= 0, or null")
        resolve_mixed_precision(self.mixed_precision, False)
        if self.on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"train.on_nonfinite must be stop or skip; got {self.on_nonfinite!r}")
        if self.init_from is not None and not isinstance(self.init_from, str):
            raise ValueError(f"train.init_from must be a checkpoint path; got {self.init_from!r}")
        for name in ("fsdp", "grad_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"train.{name} must be true or false; got {getattr(self, name)!r}")


CPUINFO = Path("/proc/cpuinfo")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX-BF16 in ``/proc/cpuinfo``; False where
    that file does not exist). Without it, bf16 autocast is emulated: 0.28 against 1.00
    shapes-t2i-pixel steps/s on one core of an AVX-512 Xeon without AVX512-BF16."""
    try:
        flags = CPUINFO.read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _require(name: str, value, ok, what: str, kind: type = float) -> None:
    """ValueError ``train.NAME must be WHAT; got VALUE`` unless value is a finite ``kind`` with ok(value)."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        numeric = isinstance(value, int) and not isinstance(value, bool)
    if not (numeric and math.isfinite(value) and ok(value)):
        raise ValueError(f"train.{name} must be {what}; got {value!r}")


def resolve_mixed_precision(value: str, use_cuda: bool) -> str:
    """``"auto"`` -> ``"bf16"`` on CUDA, ``"no"`` (fp32) on CPU; validates the others. Not bf16 on CPU even
    where it is native: on a Xeon with AVX512-BF16 (no AMX) shapes-t2i-pixel trained at 0.53 steps/s
    under bf16 against 0.78 in fp32, one core each side by side (README, "What mattered")."""
    if value == "auto":
        return "bf16" if use_cuda else "no"
    if value not in ("no", "bf16", "fp16"):
        raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16; got {value!r}")
    return value
