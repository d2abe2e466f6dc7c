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
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm

from latentdiff.config import Config
from latentdiff.io.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from latentdiff.io.images import save_grid
from latentdiff.training.batches import BatchStream
from latentdiff.training.ema import EMA
from latentdiff.training.optim import build_optimizer, warmup_schedule
from latentdiff.training.plots import plot_loss
from latentdiff.training.state import gather_rng_states, restore_rng_states

LossFn = Callable[[nn.Module, dict, torch.Generator], "tuple[torch.Tensor, dict[str, float]]"]
SampleFn = Callable[[nn.Module, int], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """Training-loop settings. ``batch_size`` is per process; steps count optimizer steps."""

    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0  # max global grad norm; <= 0 disables clipping
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 10000
    max_minutes: float | None = None  # training-time budget, summed across resumes
    ema_decay: float = 0.999
    mixed_precision: str = "auto"  # "auto" (bf16 on CUDA, else no), "no", "bf16", "fp16"
    sample_every: int = 1000
    checkpoint_every: int = 1000
    log_every: int = 25
    seed: int = 0
    num_workers: int = 0


def resolve_mixed_precision(value: str, use_cuda: bool) -> str:
    """``"auto"`` -> ``"bf16"`` on CUDA, ``"no"`` otherwise; validates the others."""
    if value == "auto":
        return "bf16" if use_cuda else "no"
    if value not in ("no", "bf16", "fp16"):
        raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16; got {value!r}")
    return value


class Trainer:
    """Train ``model`` with ``loss_fn`` on ``dataset``.

    Args:
        model: the plain module to train (e.g. the U-Net backbone).
        loss_fn: ``loss_fn(model, batch, generator) -> (loss, logs)``; ``loss``
            a scalar tensor, ``logs`` a ``dict[str, float]`` logged with it.
        dataset: returns dicts of tensors (and maybe lists of str); an
            in-memory dataset may offer ``get_batch(index: LongTensor (B,)) -> dict``.
        cfg: the loop settings.
        out_dir: the run folder; if it holds ``checkpoint/``, training resumes.
        run_config: the full, JSON-able run config saved with checkpoints.
        sample_fn: optional ``sample_fn(ema_model, step) -> (N, C, H, W)`` in
            ``[-1, 1]``; called on the main process every ``sample_every``
            steps and at the end; ``caption`` and ``nrow`` attributes on it title and shape the grids.
        cpu: force CPU (``True``) or not; ``None`` uses CUDA when available.
        unused_parameters: some steps leave parameters without gradients (DMD2's fake-score-only
            steps), so DDP must look for them (``find_unused_parameters``).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        dataset: Any,
        cfg: TrainConfig,
        out_dir: str | Path,
        run_config: dict,
        sample_fn: SampleFn | None = None,
        cpu: bool | None = None,
        unused_parameters: bool = False,
    ) -> None:
        if cpu is None:
            cpu = not torch.cuda.is_available()
        self.cfg, self.loss_fn, self.sample_fn = cfg, loss_fn, sample_fn
        self.out_dir, self.run_config = Path(out_dir), run_config
        self.ckpt_dir = self.out_dir / "checkpoint"
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.accelerator = Accelerator(
            cpu=cpu,
            mixed_precision=resolve_mixed_precision(cfg.mixed_precision, not cpu and torch.cuda.is_available()),
            gradient_accumulation_steps=cfg.grad_accum,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=unused_parameters)],
        )
        acc = self.accelerator
        self.rank, self.world_size = acc.process_index, acc.num_processes
        self.step, self.elapsed_before_s = 0, 0.0
        self._saved_step = self._sampled_step = -1
        self.last_loss: float | None = None  # mean loss of the latest metrics window
        self._t_start = time.time()
        self.generator = torch.Generator().manual_seed(cfg.seed * 65537 + self.rank)
        self.data = BatchStream(
            dataset, cfg.batch_size, cfg.seed, self.rank, self.world_size, cfg.num_workers, acc.device
        )

        # Load weights into the plain module before wrapping it, and copy the EMA
        # from it before accelerate patches its forward for mixed precision.
        state = load_checkpoint(self.ckpt_dir) if checkpoint_exists(self.ckpt_dir) else None
        if state is not None:
            model.load_state_dict(state.model_state)
        self.ema = EMA(model, cfg.ema_decay)
        if state is not None and state.ema_state is not None:
            self.ema.load_state_dict(state.ema_state)
        optimizer = build_optimizer(model.parameters(), cfg.lr, cfg.weight_decay, (0.9, 0.999))
        # The scheduler is stepped by hand once per optimizer step (accelerate's
        # wrapper would step it once per process).
        self.scheduler = warmup_schedule(optimizer, cfg.warmup_steps)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        if state is None or state.ema_state is None:
            # Wrapping for DDP has just given every rank rank 0's initial weights; the EMA,
            # copied before that from this rank's own initialisation, starts from them too.
            self.ema.load_state_dict(acc.unwrap_model(self.model).state_dict())
        self.ema.to(acc.device)
        if state is not None and state.trainer_state is not None:
            self._load_trainer_state(state.trainer_state)
        else:
            set_seed(cfg.seed, device_specific=True)  # dropout etc. in a fresh run
        if state is not None and state.config != json.loads(json.dumps(run_config)):
            acc.print(f"note: run config differs from the checkpoint's in {self.ckpt_dir}; using the new one")
        self._stop_signal: int | None = None

    # ------------------------------------------------------------------ main loop

    def train(self) -> dict[str, Any]:
        """Run until ``max_steps`` or ``max_minutes``; returns
        ``{"steps", "minutes", "final_loss"}``.

        On SIGINT/SIGTERM: finish the current step, save a checkpoint, then
        raise ``KeyboardInterrupt`` / exit with status 143. On a non-finite
        loss: raise ``FloatingPointError`` at once, without saving.
        """
        acc, cfg = self.accelerator, self.cfg
        if acc.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(json.dumps(self.run_config, indent=2, sort_keys=True))
            self._truncate_metrics()
        acc.wait_for_everyone()
        self.model.train()
        self._t_start = time.time()
        window = _Window()
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not acc.is_main_process, desc="train")
        handlers = self._install_signal_handlers()
        try:
            # elapsed_before_s comes from the checkpoint, so all ranks agree here.
            stop = cfg.max_minutes is not None and self.elapsed_before_s >= cfg.max_minutes * 60
            while self.step < cfg.max_steps and not stop:
                loss, logs, stop = self._train_step()
                window.add(loss, logs)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", **self._budget_postfix())
                if self.step % cfg.log_every == 0:
                    self._log(window)
                if self.step % cfg.checkpoint_every == 0:
                    self.save()
                if self.step % cfg.sample_every == 0:
                    self._sample()
            self._finish(window)
        finally:
            bar.close()
            self._restore_signal_handlers(handlers)
        if self._stop_signal == signal.SIGTERM:
            raise SystemExit(143)
        if self._stop_signal is not None:
            raise KeyboardInterrupt
        return {"steps": self.step, "minutes": self.elapsed_s() / 60, "final_loss": self.last_loss}

    def _train_step(self) -> tuple[float, dict[str, float], bool]:
        """One optimizer step over ``grad_accum`` micro-batches.

        Returns the mean loss, the mean logs and whether all processes must
        stop now (signal or time budget)."""
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
        if any_bad:
            where = sorted(bad) if bad else "on another process"
            raise FloatingPointError(
                f"non-finite loss at step {self.step + 1}: {where}; last good checkpoint kept in {self.ckpt_dir}"
            )
        logs = {k: v / cfg.grad_accum for k, v in logs_sum.items()}
        if cfg.grad_clip > 0:
            logs["grad_norm"] = float(acc.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
        self.optimizer.step()
        if not acc.optimizer_step_was_skipped:  # fp16 skips steps with inf gradients
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(acc.unwrap_model(self.model), self.step)  # 0-based index of this step
        self.step += 1
        return loss_sum / cfg.grad_accum, logs, stop

    def _agree(self, bad: bool, stop: bool) -> tuple[bool, bool]:
        """All processes learn whether any saw a non-finite loss or must stop,
        so that they all leave the loop at the same step (no hung collectives)."""
        if self.world_size == 1:
            return bad, stop
        flags = torch.tensor([float(bad), float(stop)], device=self.accelerator.device)
        flags = self.accelerator.reduce(flags, reduction="sum")
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def _finish(self, window: "_Window") -> None:
        """Final metrics line, checkpoint and samples (each unless already done at this step)."""
        if window.count:
            self._log(window)
        if self._saved_step != self.step:
            self.save()
        if self._sampled_step != self.step:
            self._sample()

    def _budget_postfix(self) -> dict[str, str]:
        """With a time budget the step total says little: show minutes used / budget."""
        if self.cfg.max_minutes is None:
            return {}
        return {"min": f"{self.elapsed_s() / 60:.1f}/{self.cfg.max_minutes:g}"}

    def elapsed_s(self) -> float:
        """Training time in seconds, including earlier runs of this folder."""
        return self.elapsed_before_s + (time.time() - self._t_start)

    # ------------------------------------------------------------------ logging and samples

    def _log(self, window: "_Window") -> None:
        acc = self.accelerator
        loss = window.loss_sum / window.count
        if self.world_size > 1:
            loss = acc.reduce(torch.tensor(loss, device=acc.device), reduction="mean").item()
        self.last_loss = loss
        now = time.time()
        record = {
            "step": self.step,
            "loss": loss,
            "lr": self.scheduler.get_last_lr()[0],
            "steps_per_s": window.count / max(now - window.t0, 1e-9),
            "minutes": self.elapsed_s() / 60,
            **{k: v / window.count for k, v in window.logs_sum.items()},
        }
        if acc.is_main_process:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        window.reset()

    def _truncate_metrics(self) -> None:
        """Drop lines logged after the checkpoint we resume from (their steps will be redone)."""
        if not self.metrics_path.exists():
            return
        keep = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= self.step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue
        self.metrics_path.write_text("".join(line + "\n" for line in keep))

    def _sample_path(self, step: int) -> Path:
        return self.out_dir / "samples" / f"step_{step:06d}.png"

    def _sample(self) -> None:
        """Main process: sample from the EMA model and save a grid. The torch RNG
        is forked so that sampling never changes the training randomness."""
        acc = self.accelerator
        if self.sample_fn is not None and acc.is_main_process:
            devices = [acc.device] if acc.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                images = self.sample_fn(self.ema.model, self.step)
            title = getattr(self.sample_fn, "caption", "EMA samples")
            save_grid(images, self._sample_path(self.step), nrow=getattr(self.sample_fn, "nrow", None),
                      caption=f"{title}, step {self.step}")
        self._sampled_step = self.step
        acc.wait_for_everyone()

    # ------------------------------------------------------------------ checkpoints

    def save(self) -> None:
        """Save ``out_dir/checkpoint`` (all processes must call this together)."""
        acc = self.accelerator
        per_rank = gather_rng_states(acc, self.generator)
        acc.wait_for_everyone()
        if acc.is_main_process:
            epoch, index = self.data.position
            trainer_state = {
                "step": self.step,
                "epoch": epoch,
                "batch_index": index,
                "world_size": self.world_size,
                "elapsed_s": self.elapsed_s(),
                "max_steps": self.cfg.max_steps,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                **per_rank,
            }
            if acc.scaler is not None:
                trainer_state["grad_scaler"] = acc.scaler.state_dict()
            model_state = acc.unwrap_model(self.model).state_dict()
            save_checkpoint(self.ckpt_dir, self.run_config, model_state, self.ema.state_dict(), trainer_state)
            if self.metrics_path.exists():
                plot_loss(self.metrics_path, self.out_dir / "loss.png")
        self._saved_step = self.step
        acc.wait_for_everyone()

    def _load_trainer_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self._saved_step = self.step
        self.elapsed_before_s = float(state["elapsed_s"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
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

    # ------------------------------------------------------------------ signals

    def _install_signal_handlers(self) -> dict:
        """SIGINT/SIGTERM set a flag checked at step boundaries; a second SIGINT aborts at once."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: abort without saving
            self._stop_signal = signum

        return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_signal_handlers(handlers: dict) -> None:
        for sig, previous in handlers.items():
            signal.signal(sig, previous)


class _Window:
    """Running sums of the losses and logs since the last metrics line."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.count, self.logs_sum, self.t0 = 0.0, 0, {}, time.time()

    def add(self, loss: float, logs: dict[str, float]) -> None:
        self.loss_sum += loss
        self.count += 1
        for k, v in logs.items():
            self.logs_sum[k] = self.logs_sum.get(k, 0.0) + v
