"""The training loop on a tiny MLP denoiser: exact resume, run folder, failures, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from latentdiff.io.checkpoint import load_checkpoint
from latentdiff.training import DivergenceError, TrainConfig, Trainer, TrainingStopped, epoch_permutation

ROOT = Path(__file__).resolve().parents[1]


class ItemData:
    """8-d vectors, one dict per item (the DataLoader path)."""

    def __init__(self, n: int = 48, seed: int = 0) -> None:
        self.x = torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "idx": torch.tensor(i)}


class VectorData(ItemData):
    """The same data with the in-memory ``get_batch`` fast path."""

    def get_batch(self, index: torch.Tensor) -> dict:
        return {"x": self.x[index], "idx": index}


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(9, 16), nn.SiLU(), nn.Dropout(0.1), nn.Linear(16, 8))


def denoise_loss(model, batch, generator):
    """Predict the noise added at a random level; all randomness from ``generator``."""
    x = batch["x"]
    noise = torch.randn(x.shape, generator=generator)
    t = torch.rand(x.shape[0], 1, generator=generator)
    pred = model(torch.cat([x + t * noise, t], dim=1))
    loss = (pred - noise).pow(2).mean()
    return loss, {"mse": loss.item()}


def sample_fn(ema_model, step):
    """Uses the global RNG on purpose: the trainer must keep it out of training."""
    out = ema_model(torch.randn(4, 9)).tanh()
    return out[:, :3, None, None].expand(-1, -1, 8, 8)


def config(**changes) -> TrainConfig:
    base = dict(batch_size=8, lr=1e-2, warmup_steps=3, grad_accum=2, max_steps=20, sample_every=5,
                checkpoint_every=5, log_every=4, seed=3, ema_decay=0.9)
    return TrainConfig(**{**base, **changes})


def run(out_dir, cfg, data=None, loss_fn=denoise_loss, seed=0) -> Trainer:
    trainer = Trainer(tiny_model(seed), loss_fn, data or VectorData(), cfg, out_dir,
                      run_config={"train": cfg.to_dict()}, sample_fn=sample_fn, cpu=True)
    trainer.summary = trainer.train()
    return trainer


def assert_identical(a: Trainer, b: Trainer) -> None:
    for name, pa in a.model.state_dict().items():
        assert torch.equal(pa, b.model.state_dict()[name]), name
    for name, ea in a.ema.state_dict().items():
        assert torch.equal(ea, b.ema.state_dict()[name]), name


def test_resume_is_bitwise_exact(tmp_path):
    full = run(tmp_path / "full", config())
    run(tmp_path / "split", config(max_steps=10))
    # The resumed run starts from a differently initialised model: all must come from the checkpoint.
    resumed = run(tmp_path / "split", config(), seed=1)
    assert full.step == resumed.step == 20
    assert_identical(full, resumed)
    fa, fb = (load_checkpoint(p / "checkpoint") for p in (tmp_path / "full", tmp_path / "split"))
    assert fa.trainer_state["step"] == fb.trainer_state["step"] == 20
    assert fa.trainer_state["epoch"] == fb.trainer_state["epoch"] == 6  # 40 micro-batches, 6 per epoch
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 8, 10, 12, 16, 20]  # 10 = end of the first run's last window


def test_run_folder(tmp_path):
    trainer = run(tmp_path, config(max_steps=10))
    assert trainer.summary["steps"] == 10 and trainer.summary["final_loss"] > 0
    assert json.loads((tmp_path / "config.json").read_text()) == {"train": config(max_steps=10).to_dict()}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8, 10]
    assert {"step", "loss", "lr", "steps_per_s", "minutes", "mse", "grad_norm"} <= set(records[0])
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert sorted(os.listdir(tmp_path / "samples")) == ["step_000005.png", "step_000010.png"]
    state = load_checkpoint(tmp_path / "checkpoint")
    assert state.config == {"train": config(max_steps=10).to_dict()}
    assert state.trainer_state["step"] == 10 and state.trainer_state["max_steps"] == 10
    assert set(state.ema_state) == set(state.model_state)


def test_dataloader_path_matches_get_batch(tmp_path):
    a = run(tmp_path / "a", config(max_steps=4, grad_accum=1))
    b = run(tmp_path / "b", config(max_steps=4, grad_accum=1), data=ItemData())
    assert_identical(a, b)


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path):
    calls = []

    def exploding(model, batch, generator):
        loss, logs = denoise_loss(model, batch, generator)
        calls.append(1)
        if len(calls) > 14:  # micro-batch 15 = optimizer step 8
            return loss * float("nan"), {"mse": float("inf")}
        return loss, logs

    with pytest.raises(DivergenceError, match=r"step 8: non-finite loss, mse; kept the checkpoint of step 5 in"):
        run(tmp_path, config(), loss_fn=exploding)
    state = load_checkpoint(tmp_path / "checkpoint")
    assert state.path.name == "checkpoint" and state.trainer_state["step"] == 5
    assert all(torch.isfinite(v).all() for v in state.model_state.values())
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "config.json", "loss.png", "metrics.jsonl", "samples",
                                       "train.lock"]


def test_sigterm_saves_then_exits(tmp_path):
    calls = []

    def interrupted(model, batch, generator):
        calls.append(1)
        if len(calls) == 5:  # during optimizer step 3
            os.kill(os.getpid(), signal.SIGTERM)
        return denoise_loss(model, batch, generator)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingStopped, match="SIGTERM at step 3; checkpoint saved in .*run the same command") as info:
        run(tmp_path, config(), loss_fn=interrupted)
    assert info.value.exit_code == 143
    assert load_checkpoint(tmp_path / "checkpoint").trainer_state["step"] == 3
    assert signal.getsignal(signal.SIGTERM) == before  # handler restored


def test_time_budget_stops(tmp_path):
    trainer = run(tmp_path, config(max_minutes=1e-9))
    assert trainer.step == 1
    assert load_checkpoint(tmp_path / "checkpoint").trainer_state["step"] == 1


def test_epoch_permutation_is_a_function_of_seed_and_epoch():
    assert torch.equal(epoch_permutation(10, 0, 1), epoch_permutation(10, 0, 1))
    assert not torch.equal(epoch_permutation(100, 0, 1), epoch_permutation(100, 0, 2))
    assert sorted(epoch_permutation(10, 5, 0).tolist()) == list(range(10))


def test_two_process_ddp(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "dist_train_script.py"), str(tmp_path)]
    for attempt in range(2):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        # One retry for one known failure only: a rank aborting in gloo's C++ teardown ("terminate called
        # without an active exception", SIGABRT), seen twice in about ten loaded full-suite runs and never
        # alone; any other failure, or that one twice, fails the test.
        if proc.returncode == 0 or "terminate called without an active exception" not in proc.stderr:
            break
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"result_rank{r}.json").read_text()) for r in range(2)]
    for r, res in enumerate(results):
        assert res["world_size"] == 2 and res["rank"] == r
        assert res["params_equal_rank0"] and res["ema_equal_rank0"], res
        assert res["steps"] == 6
    # per-rank shards: in an epoch the two ranks see disjoint halves of the data
    assert sorted(results[0]["first_epoch"] + results[1]["first_epoch"]) == list(range(32))
    state = load_checkpoint(tmp_path / "run" / "checkpoint").trainer_state
    assert len(state["loss_generator"]) == 2 and not torch.equal(*state["loss_generator"])


def test_auto_precision_is_bf16_on_cuda_and_fp32_on_any_cpu(monkeypatch, tmp_path):
    from latentdiff.training import train_config

    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(train_config, "CPUINFO", cpuinfo)
    for flags, native in (("fpu avx2 avx512f", False), ("fpu avx512f avx512_bf16", True), ("amx_bf16 amx_tile", True)):
        cpuinfo.write_text(f"processor : 0\nflags : {flags}\n")
        train_config.cpu_has_native_bf16.cache_clear()
        assert train_config.cpu_has_native_bf16() is native
        assert train_config.resolve_mixed_precision("auto", use_cuda=False) == "no"
        assert train_config.resolve_mixed_precision("auto", use_cuda=True) == "bf16"
        assert train_config.resolve_mixed_precision("no", use_cuda=True) == "no"
    train_config.cpu_has_native_bf16.cache_clear()
