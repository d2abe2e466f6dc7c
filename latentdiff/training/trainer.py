"""A model-agnostic training loop on ``accelerate``: one process or many
(``torchrun`` / ``accelerate launch``), CPU or GPU, with exact resume.

The trainer owns data order, optimisation, EMA, logging and checkpoints; the
maths lives in a user-supplied ``loss_fn(model, batch, generator) ->
(loss, logs)`` that calls ``model(...)`` (so DDP's gradient sync runs) and
draws all its noise and timesteps from ``generator``, a CPU
``torch.Generator`` owned here (seeded per rank, saved in checkpoints).

Run folder (DESIGN.md section 3)::

    out_dir/config.json      run_config
    out_dir/metrics.jsonl    one JSON line every ``log_every`` steps
    out_dir/loss.png         refreshed at every checkpoint and at the end
    out_dir/samples/step_000500.png
    out_dir/checkpoint/      last good checkpoint (see latentdiff.io.checkpoint)

Exact resume: the trainer state (latentdiff.training.state) holds the optimizer step, the data position
(epoch, batch index within the epoch), optimizer and LR-scheduler state,
every rank's loss generator and torch RNG states and the elapsed time. Data
order is a function of (seed, epoch) only, so a resumed run sees the same
batches with the same noise and, on CPU, ends bitwise equal to an
uninterrupted one. Runs stop only at optimizer-step boundaries.

Reliability (issue 17): the run folder is locked for one writer (``run_lock``); a fresh run is
seeded before anything random happens; every step checks its loss, gradient norm and updated
parameters for inf/NaN, and a checkpoint is written only after the weights it holds have given
a finite loss and gradient (``state.Snapshot``), so the last checkpoint is a good one; resuming
may change only the fields of ``resume.RESUMABLE``, which are applied to the restored optimizer.

Scale (issue 24): any launcher (torchrun on one or many nodes, accelerate launch); ``train.fsdp``
shards the model over the processes and ``train.grad_checkpointing`` recomputes block activations
(``training.sharding``); the effective batch size and learning rate are printed at the start.
Checkpoint writing and loading live in ``training.trainer_checkpoints``.
"""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate.utils import set_seed
from torch import nn

from latentdiff.io.images import save_grid
from latentdiff.progress import TrainBar
from latentdiff.training import lock as locking
from latentdiff.training.batches import make_batch_stream
from latentdiff.training.divergence import DivergenceError, nonfinite_parameters, total_grad_norm
from latentdiff.training.ema import EMA
from latentdiff.training.metrics import Window, append_record, truncate_after
from latentdiff.training.optim import build_optimizer, warmup_schedule
from latentdiff.training.sharding import (as_float, broadcast_from_rank0, build_accelerator, describe_scale,
                                          enable_grad_checkpointing, gather_into, local_parameters,
                                          shard_for_training)
from latentdiff.training.start import load_init_weights, resume_state
from latentdiff.training.signals import TrainingStopped, install_stop_handlers, restore_handlers
from latentdiff.training.state import Snapshot
from latentdiff.training.train_config import TrainConfig
from latentdiff.training.trainer_checkpoints import TrainerCheckpoints

LossFn = Callable[[nn.Module, dict, torch.Generator], "tuple[torch.Tensor, dict[str, float]]"]
SampleFn = Callable[[nn.Module, int], torch.Tensor]


class Trainer(TrainerCheckpoints):
    """Train ``model`` with ``loss_fn`` on ``dataset``.

    Args:
        model: the plain module to train (e.g. the U-Net backbone).
        loss_fn: ``loss_fn(model, batch, generator) -> (loss, logs)``; ``loss``
            a scalar tensor, ``logs`` a ``dict[str, float]`` logged with it.
        dataset: returns dicts of tensors (and maybe lists of str); an
            in-memory dataset may offer ``get_batch(index: LongTensor (B,)) -> dict``.
        cfg: the loop settings.
        out_dir: the run folder; if it holds ``checkpoint/``, training resumes (see
            ``latentdiff.training.resume`` for what may change); it is locked while the trainer lives.
        run_config: the full, JSON-able run config saved with checkpoints.
        sample_fn: optional ``sample_fn(ema_model, step) -> (N, C, H, W)`` in
            ``[-1, 1]``; called on the main process every ``sample_every``
            steps and at the end; ``caption`` and ``nrow`` attributes on it title and shape the grids.
        cpu: force CPU (``True``) or not; ``None`` uses CUDA when available.
        unused_parameters: some steps leave parameters without gradients (DMD2's fake-score-only
            steps), so DDP must look for them (``find_unused_parameters``).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, dataset: Any, cfg: TrainConfig, out_dir: str | Path,
                 run_config: dict, sample_fn: SampleFn | None = None, cpu: bool | None = None,
                 unused_parameters: bool = False) -> None:
        self.out_dir = Path(out_dir)
        locking.acquire(self.out_dir)  # first: nothing below may race another writer
        try:
            self._setup(model, loss_fn, dataset, cfg, run_config, sample_fn, cpu, unused_parameters)
        except BaseException:
            locking.release(self.out_dir)
            raise

    def _setup(self, model, loss_fn, dataset, cfg, run_config, sample_fn, cpu, unused_parameters) -> None:
        if cpu is None:
            cpu = not torch.cuda.is_available()
        self.cfg, self.loss_fn, self.sample_fn = cfg, loss_fn, sample_fn
        self.run_config = json.loads(json.dumps(run_config))
        self.ckpt_dir = self.out_dir / "checkpoint"
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.accelerator = acc = build_accelerator(cfg, cpu, unused_parameters)
        acc.print(describe_scale(acc, cfg))
        self.rank, self.world_size = acc.process_index, acc.num_processes
        self.step, self.elapsed_before_s, self.skipped = 0, 0.0, 0
        self._snapshot_step = self._sampled_step = -1
        self._pending: Snapshot | None = None  # a checkpoint waiting for its weights' check
        self._written_step: int | None  # the step of the checkpoint on disk
        self.last_loss: float | None = None  # mean loss of the latest metrics window
        self._t_start = time.time()
        self.generator = torch.Generator().manual_seed(cfg.seed * 65537 + self.rank)
        self.data = make_batch_stream(dataset, cfg.batch_size, cfg.seed, self.rank, self.world_size,
                                      cfg.num_workers, acc.device)

        # Load weights into the plain module before wrapping it, and copy the EMA
        # from it before accelerate patches its forward for mixed precision.
        state = resume_state(self.out_dir, self.ckpt_dir, self.run_config, acc.print)
        self._written_step = None if state is None else int(state.trainer_state["step"])
        if state is not None:
            model.load_state_dict(state.model_state)
        elif cfg.init_from:
            load_init_weights(model, cfg.init_from)
        if cfg.grad_checkpointing:
            enable_grad_checkpointing(model, acc.print)
        if cfg.fsdp:
            broadcast_from_rank0(model, acc.device)  # as DDP's wrapping does; FSDP keeps each rank's own slice
        self.ema = EMA(model, cfg.ema_decay)
        if state is not None and state.ema_state is not None:
            self.ema.load_state_dict(state.ema_state)
        self._plain_ema = shard_for_training(model, self.ema, acc, cfg) if cfg.fsdp else None
        optimizer = build_optimizer(model.parameters(), cfg.lr, cfg.weight_decay, (0.9, 0.999))
        # The scheduler is stepped by hand once per optimizer step (accelerate's
        # wrapper would step it once per process).
        self.scheduler = warmup_schedule(optimizer, cfg.warmup_steps)
        if cfg.fsdp:  # sharded already: accelerate would wrap it for DDP
            self.model, self.optimizer = model, acc.prepare(optimizer)
        else:
            self.model, self.optimizer = acc.prepare(model, optimizer)
        if (state is None or state.ema_state is None) and not cfg.fsdp:
            # Wrapping for DDP has just given every rank rank 0's initial weights; the EMA,
            # copied before that from this rank's own initialisation, starts from them too.
            self.ema.load_state_dict(acc.unwrap_model(self.model).state_dict())
        self.ema.to(acc.device)
        if state is not None:
            self._load_trainer_state(state.trainer_state)
        else:
            set_seed(cfg.seed, device_specific=True)  # dropout etc. in a fresh run
        self._stop_signal: int | None = None

    # ------------------------------------------------------------------ main loop

    def train(self) -> dict[str, Any]:
        """Run until ``max_steps`` or ``max_minutes``; returns ``{"steps", "minutes", "final_loss",
        "skipped_steps"}`` and releases the run folder's lock.

        On SIGINT/SIGTERM: finish the current step, save a checkpoint, then raise
        :class:`TrainingStopped` (exit code 130 / 143). On a non-finite loss, gradient or parameter:
        raise :class:`DivergenceError` at once, keeping the last good checkpoint (or, with
        ``on_nonfinite="skip"``, drop that update and go on).
        """
        try:
            return self._train()
        finally:
            locking.release(self.out_dir)

    def _train(self) -> dict[str, Any]:
        acc, cfg = self.accelerator, self.cfg
        if acc.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(json.dumps(self.run_config, indent=2, sort_keys=True))
            truncate_after(self.metrics_path, self.step)  # a resumed run redoes the later steps
        acc.wait_for_everyone()
        self.model.train()
        self._t_start = time.time()
        window = Window()
        bar = TrainBar(cfg, self.step, self.elapsed_before_s, disable=not acc.is_main_process)
        handlers = install_stop_handlers(self)
        try:
            # elapsed_before_s comes from the checkpoint, so all ranks agree here.
            stop = cfg.max_minutes is not None and self.elapsed_before_s >= cfg.max_minutes * 60
            while self.step < cfg.max_steps and not stop:
                loss, logs, stop = self._train_step()
                window.add(loss, logs)
                bar.update(self.step, self.elapsed_s(), loss)
                if self.step % cfg.log_every == 0:
                    self._log(window)
                if self.step % cfg.checkpoint_every == 0:
                    self.save()
                if self.step % cfg.sample_every == 0:
                    self._sample()
            self._finish(window)
        finally:
            bar.close()
            restore_handlers(handlers)
        bar.stopped(self.step, self.elapsed_s(), self._stop_signal)
        if self._stop_signal is not None:
            name, code = ("SIGTERM", 143) if self._stop_signal == signal.SIGTERM else ("SIGINT", 130)
            raise TrainingStopped(f"stopped by {name} at step {self.step}; checkpoint saved in {self.ckpt_dir}; "
                                  "run the same command again to resume", code)
        return {"steps": self.step, "minutes": self.elapsed_s() / 60, "final_loss": self.last_loss,
                "skipped_steps": self.skipped}

    def _train_step(self) -> tuple[float, dict[str, float], bool]:
        """One optimizer step over ``grad_accum`` micro-batches.

        Returns the mean loss (NaN for a skipped step), the mean logs and whether all processes
        must stop now (signal or time budget)."""
        acc, cfg = self.accelerator, self.cfg
        loss_sum, logs_sum, bad = 0.0, {}, set()
        for _ in range(cfg.grad_accum):
            batch = self.data.next()
            with acc.accumulate(self.model):
                loss, logs = self.loss_fn(self.model, batch, self.generator)
                acc.backward(loss)
            value = loss.detach().float().item()
            bad |= {"loss"} if not math.isfinite(value) else set()
            bad |= {k for k, v in logs.items() if not math.isfinite(float(v))}
            loss_sum += value
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + float(v)
        assert acc.sync_gradients, "micro-batch count and accelerate's accumulation counter disagree"
        time_up = cfg.max_minutes is not None and self.elapsed_s() >= cfg.max_minutes * 60
        any_bad, stop = self._agree(bool(bad), time_up or self._stop_signal is not None)
        logs = {k: v / cfg.grad_accum for k, v in logs_sum.items()}
        if not any_bad:
            params = list(self.model.parameters())
            logs["grad_norm"] = (as_float(acc.clip_grad_norm_(params, cfg.grad_clip)) if cfg.grad_clip > 0
                                 else total_grad_norm(params))
            # fp16's loss scaler expects inf gradients now and then and skips those steps itself.
            if not math.isfinite(logs["grad_norm"]) and acc.scaler is None:
                bad = {"gradient norm"}
        if any_bad or bad:
            return self._nonfinite_step(sorted(bad) or ["loss on another process"], stop)
        self._commit_pending()  # its weights have just given a finite loss and gradient
        self.optimizer.step()
        if not acc.optimizer_step_was_skipped:  # fp16 skips steps with inf gradients
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(acc.unwrap_model(self.model), self.step)  # 0-based index of this step
        self.step += 1
        self._check_parameters()
        return loss_sum / cfg.grad_accum, logs, stop

    def _check_parameters(self) -> None:
        """DivergenceError when an updated parameter holds inf or NaN (under FSDP: in any rank's shard)."""
        if not self.cfg.fsdp:
            broken = nonfinite_parameters(self.accelerator.unwrap_model(self.model))
        else:
            mine = [name for name, p in local_parameters(self.model).items() if not torch.isfinite(p).all()]
            broken = (mine[:3] or ["a shard held by another process"]) if self._agree(bool(mine), False)[0] else []
        if broken:
            raise self._diverged(self.step, f"parameters after the update ({', '.join(broken)})")

    def _nonfinite_step(self, quantities: list[str], stop: bool) -> tuple[float, dict[str, float], bool]:
        """``on_nonfinite``: stop with one line, or drop this update and count it."""
        if self.cfg.on_nonfinite != "skip":
            raise self._diverged(self.step + 1, ", ".join(quantities))
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped += 1
        self.step += 1
        self.accelerator.print(f"step {self.step}: non-finite {', '.join(quantities)}; update skipped "
                               f"({self.skipped} so far)")
        return float("nan"), {}, stop

    def _diverged(self, step: int, quantity: str) -> DivergenceError:
        dropped = f" (the checkpoint of step {self._pending.step} was not written)" if self._pending else ""
        kept = (f"kept the checkpoint of step {self._written_step} in {self.ckpt_dir}" if self._written_step is not None
                else "no checkpoint had been written")
        hint = "lower train.lr" + (", or --set train.on_nonfinite=skip to drop such updates"
                                   if self.cfg.on_nonfinite == "stop" else "")
        return DivergenceError(f"training diverged at step {step}: non-finite {quantity}; {kept}{dropped}; {hint}")

    def _agree(self, bad: bool, stop: bool) -> tuple[bool, bool]:
        """All processes learn whether any saw a non-finite loss or must stop,
        so that they all leave the loop at the same step (no hung collectives)."""
        if self.world_size == 1:
            return bad, stop
        flags = torch.tensor([float(bad), float(stop)], device=self.accelerator.device)
        flags = self.accelerator.reduce(flags, reduction="sum")
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def _finish(self, window: Window) -> None:
        """Final metrics line, checkpoint (its weights checked by a probe forward pass) and samples."""
        if window.count:
            self._log(window)
        if self._snapshot_step != self.step:
            self.save()
        if self._pending is not None:
            if not self._probe_is_finite():
                raise self._diverged(self.step + 1, "loss of the final weights (probe forward pass)")
            self._commit_pending()
        if self._sampled_step != self.step:
            self._sample()
        if self._plain_ema is not None:  # callers read trainer.ema.model: the full weights, unsharded
            self.ema.model = gather_into(self._plain_ema, self.ema.model)

    @torch.no_grad()
    def _probe_is_finite(self) -> bool:
        """Whether the next batch's loss at the current weights is finite (eval mode, no update); the
        data position and every random state are restored afterwards."""
        acc, position = self.accelerator, self.data.position
        generator = torch.Generator().manual_seed(0)
        generator.set_state(self.generator.get_state())
        devices = [acc.device] if acc.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self.model.eval()
            try:
                loss, _ = self.loss_fn(self.model, self.data.next(), generator)
            finally:
                self.model.train()
                self.data.seek(*position)
        return not self._agree(not math.isfinite(float(loss)), False)[0]

    def elapsed_s(self) -> float:
        """Training time in seconds, including earlier runs of this folder."""
        return self.elapsed_before_s + (time.time() - self._t_start)

    # ------------------------------------------------------------------ logging and samples

    def _log(self, window: Window) -> None:
        acc = self.accelerator
        loss = window.mean_loss()
        if self.world_size > 1:
            loss = acc.reduce(torch.tensor(loss, device=acc.device), reduction="mean").item()
        self.last_loss = loss
        record = window.record(self.step, loss, self.scheduler.get_last_lr()[0], self.elapsed_s() / 60)
        if self.skipped:
            record["skipped_steps"] = self.skipped
        if getattr(self.data, "corrupt", 0):  # a shard stream's skipped corrupt items (this process)
            record["corrupt_members"] = self.data.corrupt
        if acc.is_main_process:
            append_record(self.metrics_path, record)
        window.reset()

    def _sample_path(self, step: int) -> Path:
        return self.out_dir / "samples" / f"step_{step:06d}.png"

    def _sample(self) -> None:
        """Main process: sample from the EMA model and save a grid. The torch RNG
        is forked so that sampling never changes the training randomness."""
        acc = self.accelerator
        ema_model = self.ema.model
        if self.sample_fn is not None and self._plain_ema is not None:  # all ranks gather the EMA shards
            ema_model = gather_into(self._plain_ema, self.ema.model)
        if self.sample_fn is not None and acc.is_main_process:
            devices = [acc.device] if acc.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                images = self.sample_fn(ema_model, self.step)
            title = getattr(self.sample_fn, "caption", "EMA samples")
            save_grid(images, self._sample_path(self.step), nrow=getattr(self.sample_fn, "nrow", None),
                      caption=f"{title}, step {self.step}")
        self._sampled_step = self.step
        acc.wait_for_everyone()
