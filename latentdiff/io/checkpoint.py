"""Checkpoint directories, written atomically (DESIGN.md section 3).

A checkpoint is a directory::

    config.json           the full run config (a JSON dict)
    model.safetensors     the trained module's state dict
    ema.safetensors       the EMA copy's state dict (optional)
    trainer_state.pt      optimizer / scheduler / RNG / step state (optional),
                          only tensors, numbers, strings, lists and dicts, so
                          it loads with ``torch.load(..., weights_only=True)``

Atomicity. :func:`save_checkpoint` writes everything into a fresh sibling
directory ``<name>.tmp``, fsyncs every file and the directory, then swaps it
in with two renames: ``<name> -> <name>.old`` and ``<name>.tmp -> <name>``,
and finally deletes ``<name>.old``. A rename is atomic, so whenever the
process dies there is either ``<name>`` (complete: it only ever appears by
renaming a finished, fsynced directory) or, between the two renames, only
``<name>.old`` (the previous complete checkpoint). :func:`load_checkpoint`
reads ``<name>`` and falls back to ``<name>.old``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
TRAINER_STATE_FILE = "trainer_state.pt"

# Types a trainer state may hold (what ``torch.load(weights_only=True)`` reads back).
_PLAIN_SCALARS = (bool, int, float, str, type(None))


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        config: the run config dict from ``config.json``.
        model_state: ``name -> Tensor`` (CPU) for the trained module.
        ema_state: ``name -> Tensor`` for the EMA copy, or ``None``.
        trainer_state: optimizer/scheduler/RNG/step state, or ``None``.
        path: the directory actually read (``<name>.old`` after a recovery).
    """

    config: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor] | None
    trainer_state: dict[str, Any] | None
    path: Path


def _old_path(path: Path) -> Path:
    return path.with_name(path.name + ".old")


def _tmp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def resolve_checkpoint(path: str | os.PathLike) -> Path | None:
    """The complete checkpoint directory for ``path``: ``path`` itself, or
    ``path.old`` when a save was killed between its two renames; ``None`` if
    neither exists."""
    path = Path(path)
    for candidate in (path, _old_path(path)):
        if (candidate / CONFIG_FILE).is_file() and (candidate / MODEL_FILE).is_file():
            return candidate
    return None


def checkpoint_exists(path: str | os.PathLike) -> bool:
    """Whether :func:`load_checkpoint` would find a checkpoint at ``path``."""
    return resolve_checkpoint(path) is not None


def save_checkpoint(
    path: str | os.PathLike,
    config: dict[str, Any],
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor] | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (see the module docstring).

    Args:
        path: the checkpoint directory, e.g. ``run/checkpoint``.
        config: JSON-serialisable run config.
        model_state: state dict of the trained module (any device; tied
            tensors are cloned, all tensors made contiguous on CPU).
        ema_state: state dict of the EMA copy, optional.
        trainer_state: nested dicts/lists of tensors, numbers and strings.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if trainer_state is not None:
        _check_plain(trainer_state, "trainer_state")
    config_text = json.dumps(config, indent=2, sort_keys=True)  # fail before touching disk

    tmp = _tmp_path(path)
    if tmp.exists():  # leftover of a save that was killed while writing
        shutil.rmtree(tmp)
    tmp.mkdir()
    _write_text(tmp / CONFIG_FILE, config_text)
    _write_safetensors(tmp / MODEL_FILE, model_state)
    if ema_state is not None:
        _write_safetensors(tmp / EMA_FILE, ema_state)
    if trainer_state is not None:
        _write_torch(tmp / TRAINER_STATE_FILE, trainer_state)
    _fsync_dir(tmp)
    _swap_in(tmp, path)
    return path


def _swap_in(tmp: Path, path: Path) -> None:
    """Replace ``path`` by ``tmp`` so that a complete checkpoint exists at every moment."""
    old = _old_path(path)
    if path.exists():
        if old.exists():  # stale: ``path`` is complete, so ``old`` is not needed
            shutil.rmtree(old)
        os.rename(path, old)
    os.rename(tmp, path)
    _fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Only the run config of the checkpoint at ``path`` (no tensors read); FileNotFoundError if none."""
    found = resolve_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"no checkpoint at {path} (expected a directory with {CONFIG_FILE} and {MODEL_FILE})")
    return json.loads((found / CONFIG_FILE).read_text())


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint directory written by :func:`save_checkpoint`.

    Falls back to ``<path>.old`` when a save was killed between its renames.
    Tensors are loaded onto ``device`` (CPU by default).

    Raises:
        FileNotFoundError: neither ``path`` nor ``path.old`` holds a checkpoint.
    """
    path = Path(path)
    found = resolve_checkpoint(path)
    if found is None:
        raise FileNotFoundError(
            f"no checkpoint at {path} (expected a directory with {CONFIG_FILE} and {MODEL_FILE})"
        )
    config = json.loads((found / CONFIG_FILE).read_text())
    model_state = load_file(found / MODEL_FILE, device=str(device))
    ema_file = found / EMA_FILE
    ema_state = load_file(ema_file, device=str(device)) if ema_file.is_file() else None
    state_file = found / TRAINER_STATE_FILE
    trainer_state = None
    if state_file.is_file():
        trainer_state = torch.load(state_file, map_location=device, weights_only=True)
    return Checkpoint(config, model_state, ema_state, trainer_state, found)


# ----------------------------------------------------------------------------- writers


def _write_text(file: Path, text: str) -> None:
    with open(file, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _write_safetensors(file: Path, state: dict[str, torch.Tensor]) -> None:
    save_file(_plain_tensors(state), str(file))
    _fsync_file(file)


def _write_torch(file: Path, obj: Any) -> None:
    with open(file, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _plain_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors; tensors sharing storage are cloned
    (safetensors refuses tied weights)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state entry {name!r} is a {type(tensor).__name__}, not a tensor")
        t = tensor.detach().cpu()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or t.numel() * t.element_size() != t.untyped_storage().nbytes():
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t.contiguous()
    return out


def _check_plain(obj: Any, where: str) -> None:
    """Raise TypeError naming the first value ``weights_only`` loading would reject."""
    if isinstance(obj, torch.Tensor) or isinstance(obj, _PLAIN_SCALARS):
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is not a str or int")
            _check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(obj).__name__}; trainer state may hold only tensors, numbers, strings, lists and dicts")


def _fsync_file(file: Path) -> None:
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Persist a directory's entries (renames, new files); a no-op where unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
