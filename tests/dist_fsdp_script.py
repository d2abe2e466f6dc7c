"""Run by tests/test_distributed.py under ``torchrun --standalone --nproc_per_node 2``.

Trains a tiny U-Net (self- and cross-attention, so FSDP has several units) with ``train.fsdp`` and
``train.grad_checkpointing`` for 4 steps on two CPU processes (gloo), then resumes the run folder in
a second Trainer up to step 6, and trains the same 4 steps under plain DDP. Every rank writes
``OUT/fsdp_rank{rank}.json``: whether its resumed (gathered) weights equal the checkpoint's, how many
elements its shards hold, the losses, the step counts and how far FSDP's weights are from DDP's.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from latentdiff.io.checkpoint import load_checkpoint
from latentdiff.nn.unet import UNet, UNetConfig
from latentdiff.training import TrainConfig, Trainer
from latentdiff.training.sharding import gathered_state, is_sharded


class TinyImages:
    """16 random 1x8x8 images with text tokens (B, 3, 8)."""

    def __init__(self, n: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.text = torch.randn(n, 1, 8, 8, generator=g), torch.randn(n, 3, 8, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def get_batch(self, index: torch.Tensor) -> dict:
        return {"x": self.x[index], "text": self.text[index]}


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(UNetConfig(image_size=8, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                           dropout=0.1, norm_groups=4, context_dim=8))


def denoise_loss(model, batch, generator):
    x = batch["x"]
    noise = torch.randn(x.shape, generator=generator)
    t = torch.rand(x.shape[0], generator=generator)
    pred = model(x + t[:, None, None, None] * noise, t * 1000, text=batch["text"])
    loss = (pred - noise).pow(2).mean()
    return loss, {"mse": loss.item()}


def states_equal(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(torch.equal(a[k].float(), b[k].float()) for k in a)


def main(out: Path) -> None:
    cfg = TrainConfig(batch_size=4, lr=1e-3, warmup_steps=1, max_steps=4, sample_every=100, checkpoint_every=2,
                      log_every=1, seed=3, ema_decay=0.9, fsdp=True, grad_checkpointing=True)
    run = out / "run"
    first = Trainer(tiny_unet(), denoise_loss, TinyImages(), cfg, run, run_config={"train": cfg.to_dict()}, cpu=True)
    sharded = [p for p in first.model.parameters() if is_sharded(p)]
    local = torch.cat([p.to_local().flatten() for p in sharded])
    summary1 = first.train()
    saved = load_checkpoint(run / "checkpoint", trainer_state=True)

    cfg2 = cfg.replace(max_steps=6)
    second = Trainer(tiny_unet(), denoise_loss, TinyImages(), cfg2, run, run_config={"train": cfg2.to_dict()},
                     cpu=True)
    resumed_step = second.step
    resumed_equal = states_equal(gathered_state(second.model), saved.model_state)
    resumed_ema_equal = states_equal(gathered_state(second.ema.model), saved.ema_state)
    summary2 = second.train()
    final = load_checkpoint(run / "checkpoint", trainer_state=True)
    plain_cfg = cfg.replace(fsdp=False, grad_checkpointing=False)  # the same 4 steps under DDP
    Trainer(tiny_unet(), denoise_loss, TinyImages(), plain_cfg, out / "ddp", run_config={"train": plain_cfg.to_dict()},
            cpu=True).train()
    ddp = load_checkpoint(out / "ddp" / "checkpoint").model_state
    rank = dist.get_rank()
    result = {
        "rank": rank,
        "world_size": dist.get_world_size(),
        "sharded_parameters": len(sharded),
        "all_parameters": sum(1 for _ in first.model.parameters()),
        "local_numel": int(local.numel()),
        "full_numel": sum(v.numel() for v in saved.model_state.values() if v.is_floating_point()),
        "steps": [summary1["steps"], resumed_step, summary2["steps"]],
        "losses": [summary1["final_loss"], summary2["final_loss"]],
        "losses_finite": all(math.isfinite(v) for v in (summary1["final_loss"], summary2["final_loss"])),
        "resumed_equal_saved": resumed_equal,
        "resumed_ema_equal_saved": resumed_ema_equal,
        "checkpoint_steps": [int(saved.trainer_state["step"]), int(final.trainer_state["step"])],
        "final_ema_is_plain": not any(is_sharded(p) for p in second.ema.model.parameters()),
        "final_ema_equal_checkpoint": states_equal(second.ema.model.state_dict(), final.ema_state),
        "max_abs_diff_to_ddp": max(float((saved.model_state[k] - ddp[k]).abs().max()) for k in ddp),
    }
    (out / f"fsdp_rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
