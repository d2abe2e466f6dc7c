"""Run by tests/test_distributed.py on each of two torchrun "nodes" (``--nnodes 2 --nproc_per_node 1
--node_rank R --rdzv_backend c10d --rdzv_endpoint 127.0.0.1:PORT``), or any other launch.

Trains ``latentdiff train --preset tiny`` through the CLI's own entry point for a few steps, then
every rank writes ``OUT/fingerprint_rank{rank}.json``: SHA-256 digests of its parameters and of its
EMA, its rank, world size, local rank and the run's step count.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import latentdiff.pipelines.diffusion as diffusion
from latentdiff.cli.main import main as cli_main
from latentdiff.training import Trainer

TRAINERS: list[Trainer] = []


class RecordingTrainer(Trainer):
    """The library's Trainer, remembered so that its weights can be fingerprinted after the run."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        TRAINERS.append(self)


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def main(out: Path) -> None:
    diffusion.Trainer = RecordingTrainer
    cli_main(["train", "--preset", "tiny", "--out", str(out / "run"), "--set", "train.max_steps=4",
              "train.checkpoint_every=2", "train.sample_every=100", "train.batch_size=8"])
    trainer = TRAINERS[-1]
    model = trainer.accelerator.unwrap_model(trainer.model)
    result = {
        "rank": dist.get_rank(),
        "world_size": dist.get_world_size(),
        "local_rank": int(os.environ["LOCAL_RANK"]),
        "node_rank": int(os.environ.get("GROUP_RANK", -1)),
        "steps": trainer.step,
        "params": fingerprint(model.state_dict()),
        "ema": fingerprint(trainer.ema.state_dict()),
    }
    (out / f"fingerprint_rank{result['rank']}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
