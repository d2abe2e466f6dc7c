"""Run by tests/test_trainer.py under ``torchrun --nproc_per_node 2``.

Trains the tiny MLP for a few steps on two CPU processes (gloo), each on its
own shard, then checks on every rank that its parameters and EMA equal rank
0's, and writes ``OUT/result_rank{rank}.json`` for the test to assert on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_trainer import VectorData, denoise_loss, sample_fn, tiny_model  # noqa: E402

from latentdiff.training import TrainConfig, Trainer  # noqa: E402


def same_as_rank0(tensors: dict[str, torch.Tensor]) -> bool:
    """Broadcast rank 0's copy of every tensor and compare bitwise."""
    ok = True
    for name in sorted(tensors):
        local = tensors[name].detach().clone()
        reference = local.clone()
        dist.broadcast(reference, src=0)
        ok &= torch.equal(local, reference)
    return ok


def main(out: Path) -> None:
    seen: list[int] = []

    def recording_loss(model, batch, generator):
        seen.extend(batch["idx"].tolist())
        return denoise_loss(model, batch, generator)

    cfg = TrainConfig(batch_size=4, lr=1e-2, warmup_steps=2, max_steps=6, sample_every=3,
                      checkpoint_every=3, log_every=2, seed=1, ema_decay=0.9)
    trainer = Trainer(tiny_model(0), recording_loss, VectorData(n=32), cfg, out / "run",
                      run_config={"train": cfg.to_dict()}, sample_fn=sample_fn, cpu=True)
    summary = trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    result = {
        "rank": dist.get_rank(),
        "world_size": dist.get_world_size(),
        "steps": summary["steps"],
        "params_equal_rank0": same_as_rank0(model.state_dict()),
        "ema_equal_rank0": same_as_rank0(trainer.ema.state_dict()),
        "first_epoch": sorted(seen[:16]),  # 32 items / 2 ranks
    }
    (out / f"result_rank{result['rank']}.json").write_text(json.dumps(result))
    trainer.accelerator.wait_for_everyone()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
