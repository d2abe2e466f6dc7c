"""The Trainer's checkpoints: snapshot a step, write it once its weights have proved finite, and load
the trainer state back (a mixin of ``training.trainer.Trainer``, cut out of it to keep each file short).

What a checkpoint holds is described in ``training.trainer``; under ``train.fsdp`` the model and EMA
weights are gathered to full tensors first and the optimizer state is keyed by parameter name
(``training.sharding``), so the files are those of a plain run.
"""

from __future__ import annotations

from typing import Any

from accelerate.utils import set_seed

from latentdiff.io.checkpoint import save_checkpoint
from latentdiff.training.divergence import nonfinite_state
from latentdiff.training.plots import plot_loss
from latentdiff.training.resume import apply_train_settings
from latentdiff.training.sharding import full_optimizer_state, gathered_state, load_full_optimizer_state
from latentdiff.training.state import Snapshot, cpu_copy, gather_rng_states, restore_rng_states


class TrainerCheckpoints:
    """``save``, ``_commit_pending`` and ``_load_trainer_state`` of the Trainer (which sets every
    attribute these read: accelerator, cfg, model, ema, optimizer, scheduler, data, generator, ...)."""

    def _weights_to_save(self) -> tuple[dict, dict, dict]:
        """(model state, EMA state, optimizer state), all ranks together; the model and optimizer states
        are only needed (and, plainly trained, only gathered) on the main process."""
        acc = self.accelerator
        if self.cfg.fsdp:
            return (gathered_state(self.model), gathered_state(self.ema.model),
                    full_optimizer_state(self.model, self.optimizer.optimizer))
        if not acc.is_main_process:
            return {}, self.ema.state_dict(), {}
        return acc.unwrap_model(self.model).state_dict(), self.ema.state_dict(), self.optimizer.state_dict()

    def save(self) -> None:
        """Snapshot a checkpoint of this step (all processes must call this together). It is written
        to ``out_dir/checkpoint`` once its weights have given a finite loss and gradient: at the next
        step, or at the end of the run after a probe forward pass."""
        acc = self.accelerator
        per_rank = gather_rng_states(acc, self.generator)
        self._pending = None
        model_state, ema_state, optimizer_state = self._weights_to_save()
        broken = nonfinite_state(ema_state)  # equal on every rank, so all of them stop together
        if broken:
            raise self._diverged(self.step, f"EMA weights ({', '.join(broken)})")
        if acc.is_main_process:
            epoch, index = self.data.position
            trainer_state = {
                "step": self.step,
                "epoch": epoch,
                "batch_index": index,
                "world_size": self.world_size,
                "elapsed_s": self.elapsed_s(),
                "max_steps": self.cfg.max_steps,
                "skipped_steps": self.skipped,
                "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict(),
                **per_rank,
            }
            if acc.scaler is not None:
                trainer_state["grad_scaler"] = acc.scaler.state_dict()
            self._pending = Snapshot(self.step, cpu_copy(model_state), cpu_copy(ema_state), cpu_copy(trainer_state))
        else:
            self._pending = Snapshot(self.step, {}, {}, {})  # the main process writes; others keep pace
        self._snapshot_step = self.step

    def _commit_pending(self) -> None:
        """Write the pending snapshot as ``out_dir/checkpoint`` (atomically) and refresh loss.png."""
        snap, self._pending = self._pending, None
        if snap is None:
            return
        acc = self.accelerator
        if acc.is_main_process:
            save_checkpoint(self.ckpt_dir, self.run_config, snap.model_state, snap.ema_state, snap.trainer_state)
            if self.metrics_path.exists():
                plot_loss(self.metrics_path, self.out_dir / "loss.png")
        self._written_step = snap.step
        acc.wait_for_everyone()

    def _load_trainer_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self._snapshot_step = self.step
        self.elapsed_before_s = float(state["elapsed_s"])
        self.skipped = int(state.get("skipped_steps", 0))
        if self.cfg.fsdp:
            load_full_optimizer_state(self.model, self.optimizer.optimizer, state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        apply_train_settings(self.optimizer, self.scheduler, self.cfg)  # changed lr etc. (resume rule)
        if "grad_scaler" in state and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["grad_scaler"])
        if int(state["world_size"]) == self.world_size:
            self.data.seek(int(state["epoch"]), int(state["batch_index"]))
            restore_rng_states(self.accelerator, self.generator, state)
        else:
            # Another process count shards the data differently: continue at the
            # next epoch with fresh per-rank seeds (not bitwise exact, but sound).
            self.accelerator.print(
                f"resuming with {self.world_size} processes (checkpoint: {state['world_size']}): "
                "data continues at the next epoch"
            )
            self.data.seek(int(state["epoch"]) + 1, 0)
            self.generator.manual_seed(self.cfg.seed * 65537 + self.rank + 7919 * self.step)
            set_seed(self.cfg.seed + self.step, device_specific=True)
