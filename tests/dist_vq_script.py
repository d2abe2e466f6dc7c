"""Run by tests/test_autoencoders.py under ``torchrun --nproc_per_node 2``.

Trains a tiny VQ autoencoder with the discriminator switched on for a few steps on two CPU
processes (gloo), each on its own shard, then checks on every rank that parameters, EMA and the
EMA codebook (all-reduced statistics, restarts broadcast from rank 0) equal rank 0's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dist_train_script import same_as_rank0  # noqa: E402

from latentdiff.config import apply_overrides  # noqa: E402
from latentdiff.pipelines.autoencoder import autoencoder_trainer  # noqa: E402
from latentdiff.presets import get_preset  # noqa: E402


def main(out: Path) -> None:
    cfg = apply_overrides(get_preset("tiny-vae"), ["autoencoder.kind=vq", "autoencoder.num_codes=32",
                                                   "train.max_steps=4", "loss.disc_start=1"])
    trainer = autoencoder_trainer(cfg, out / "run", cpu=True)
    summary = trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    result = {"rank": dist.get_rank(), "steps": summary["steps"],
              "params_equal_rank0": same_as_rank0(model.state_dict()),
              "ema_equal_rank0": same_as_rank0(trainer.ema.state_dict())}
    (out / f"result_rank{result['rank']}.json").write_text(json.dumps(result))
    trainer.accelerator.wait_for_everyone()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
