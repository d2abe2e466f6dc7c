"""The trainer state saved beside a checkpoint's weights, for exact resume.

``trainer_state.pt`` holds the optimizer step, the data position (epoch, batch index within the
epoch), optimizer and LR-scheduler state, every rank's loss generator and torch RNG states and the
elapsed time: only tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)`` (latentdiff.io.checkpoint). A streamed shard folder's order is a
function of the seed and its manifest, so the same (epoch, batch index) resumes the stream where it
was (``training.batches.ShardBatchStream``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator


def gather_rng_states(acc: Accelerator, generator: torch.Generator) -> dict[str, list[torch.Tensor]]:
    """Every rank's loss-generator and torch RNG states, as lists indexed by rank (a collective)."""
    local = {"loss_generator": generator.get_state(), "cpu_rng": torch.get_rng_state()}
    if acc.device.type == "cuda":
        local["cuda_rng"] = torch.cuda.get_rng_state(acc.device)
    if acc.num_processes == 1:
        return {k: [v] for k, v in local.items()}
    out = {}
    for key, value in local.items():
        gathered = acc.gather(value.to(acc.device)[None]).cpu()
        out[key] = list(gathered.unbind(0))
    return out


def restore_rng_states(acc: Accelerator, generator: torch.Generator, state: dict[str, Any]) -> None:
    """This rank's loss-generator and torch RNG states from a :func:`gather_rng_states` dict."""
    rank = acc.process_index
    generator.set_state(state["loss_generator"][rank])
    torch.set_rng_state(state["cpu_rng"][rank])
    if "cuda_rng" in state and acc.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"][rank], acc.device)


def cpu_copy(obj: Any) -> Any:
    """A deep copy of nested dicts/lists/tuples with every tensor cloned to CPU (a state to write later)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


@dataclass
class Snapshot:
    """Everything a checkpoint of ``step`` holds, copied to CPU memory, waiting for its check.

    A snapshot is written only once the weights it holds are known to be good: once the next
    training step has computed a finite loss and gradient from them (or, at the end of a run, a
    probe forward pass has). So a diverging update is never saved as the last good checkpoint."""

    step: int
    model_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor]
    trainer_state: dict[str, Any]
