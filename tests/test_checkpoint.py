"""Checkpoint directories: round trip, safe loading, atomic replacement."""

from __future__ import annotations

import os

import pytest
import torch

from latentdiff.io import checkpoint as ckpt
from latentdiff.io.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint


def _states(seed: int):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(4, 3, generator=g)
    model = {
        "embed.weight": weight,
        "head.weight": weight,  # tied to embed.weight
        "conv.weight": torch.randn(3, 4, generator=g).t(),  # not contiguous
        "bias": torch.arange(5, dtype=torch.float16),
    }
    ema = {k: v * 0.5 for k, v in model.items()}
    trainer = {
        "step": seed,
        "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999)}]},
        "rng": [torch.get_rng_state()],
        "name": "run",
        "budget": None,
    }
    return {"seed": seed, "lr": 1e-3, "channels": [32, 64]}, model, ema, trainer


def _assert_same(loaded, config, model, ema, trainer):
    assert loaded.config == config
    for ref, got in ((model, loaded.model_state), (ema, loaded.ema_state)):
        assert set(got) == set(ref)
        for k in ref:
            assert got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k])
    assert loaded.trainer_state["step"] == trainer["step"]
    assert torch.equal(loaded.trainer_state["rng"][0], trainer["rng"][0])


def test_round_trip(tmp_path):
    config, model, ema, trainer = _states(1)
    save_checkpoint(tmp_path / "ck", config, model, ema, trainer)
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # no temp or .old leftovers
    assert sorted(os.listdir(tmp_path / "ck")) == sorted(
        ["config.json", "model.safetensors", "ema.safetensors", "trainer_state.pt"]
    )
    loaded = load_checkpoint(tmp_path / "ck")
    _assert_same(loaded, config, model, ema, trainer)
    assert loaded.trainer_state["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)


def test_optional_parts_and_overwrite(tmp_path):
    config, model, _, _ = _states(2)
    save_checkpoint(tmp_path / "ck", config, model)
    save_checkpoint(tmp_path / "ck", {"v": 2}, model)
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.config == {"v": 2}
    assert loaded.ema_state is None and loaded.trainer_state is None
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_trainer_state_loads_with_weights_only(tmp_path):
    config, model, ema, trainer = _states(3)
    save_checkpoint(tmp_path / "ck", config, model, ema, trainer)
    state = torch.load(tmp_path / "ck" / "trainer_state.pt", weights_only=True)
    assert state["name"] == "run" and torch.equal(state["optimizer"]["state"][0]["exp_avg"], torch.ones(3))


def test_rejects_objects_that_would_need_unpickling(tmp_path):
    config, model, _, _ = _states(4)
    with pytest.raises(TypeError, match=r"trainer_state\['bad'\]"):
        save_checkpoint(tmp_path / "ck", config, model, trainer_state={"bad": object()})
    assert not checkpoint_exists(tmp_path / "ck")


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere")


def test_write_failing_midway_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "ck"
    old = _states(5)
    save_checkpoint(path, *old)
    real_write = ckpt._write_bytes

    def failing(file, data):  # config, model and EMA are written; fails on trainer_state.pt
        if file.name == ckpt.TRAINER_STATE_FILE:
            raise OSError(28, "No space left on device", str(file))
        real_write(file, data)

    monkeypatch.setattr(ckpt, "_write_bytes", failing)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, *_states(6))
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # the partial write is removed
    _assert_same(load_checkpoint(path, trainer_state=True), *old)

    monkeypatch.undo()
    new = _states(7)
    save_checkpoint(path, *new)
    _assert_same(load_checkpoint(path, trainer_state=True), *new)
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_leftover_tmp_of_a_killed_save_is_replaced(tmp_path):
    path = tmp_path / "ck"
    save_checkpoint(path, *_states(1))
    (tmp_path / "ck.tmp").mkdir()
    (tmp_path / "ck.tmp" / "model.safetensors").write_bytes(b"half")
    new = _states(2)
    save_checkpoint(path, *new)
    _assert_same(load_checkpoint(path, trainer_state=True), *new)
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_recovery_when_killed_between_renames(tmp_path, monkeypatch):
    path = tmp_path / "ck"
    old = _states(8)
    save_checkpoint(path, *old)
    real_rename, calls = os.rename, []

    def rename(src, dst):  # first rename (ck -> ck.old) succeeds, then the process "dies"
        calls.append((src, dst))
        if len(calls) == 2:
            raise RuntimeError("killed")
        real_rename(src, dst)

    monkeypatch.setattr(ckpt.os, "rename", rename)
    with pytest.raises(RuntimeError, match="killed"):
        save_checkpoint(path, *_states(9))
    monkeypatch.undo()
    assert not path.exists() and (tmp_path / "ck.old").exists()
    assert checkpoint_exists(path)
    loaded = load_checkpoint(path, trainer_state=True)
    assert loaded.path.name == "ck.old"
    _assert_same(loaded, *old)

    new = _states(10)
    save_checkpoint(path, *new)
    _assert_same(load_checkpoint(path, trainer_state=True), *new)
    assert sorted(os.listdir(tmp_path)) == ["ck"]
