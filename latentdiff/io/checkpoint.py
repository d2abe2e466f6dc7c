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

Readers. :func:`load_checkpoint` opens the checkpoint directory once and reads every file
relative to that open directory, so a reader racing a save gets all its files from one
checkpoint (a swapped-out directory stays readable through the open handle; if the writer has
already deleted it, the read starts again on the new one). Damaged files are reported by name
(ValueError), and a failed write (a full disk) removes its ``.tmp`` and leaves the previous
checkpoint as it was.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

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


def weights_fingerprint(model: torch.nn.Module) -> str:
    """16 hex digits of the SHA-1 of a model's weights (its state dict, names sorted): equal for two
    checkpoints that compute alike; what a run records of the model it was built on."""
    return state_fingerprint(model.state_dict())


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """``weights_fingerprint`` of a state dict (``name -> Tensor``)."""
    import hashlib

    h = hashlib.sha1()
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


def files_digest(path: str | os.PathLike):
    """A SHA-1 hash object fed with the checkpoint's config, EMA and model files (in that order): the
    key of what the model computes, without loading it (the latent cache and shards key latents by it).
    FileNotFoundError when there is no checkpoint at ``path``."""
    import hashlib

    found = resolve_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    h = hashlib.sha1()
    for name in (CONFIG_FILE, EMA_FILE, MODEL_FILE):
        if (found / name).is_file():
            h.update((found / name).read_bytes())
    return h


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
    try:
        _write_bytes(tmp / CONFIG_FILE, config_text.encode())
        _write_bytes(tmp / MODEL_FILE, safetensors_save(_plain_tensors(model_state)))
        if ema_state is not None:
            _write_bytes(tmp / EMA_FILE, safetensors_save(_plain_tensors(ema_state)))
        if trainer_state is not None:
            buffer = io.BytesIO()
            torch.save(trainer_state, buffer)
            _write_bytes(tmp / TRAINER_STATE_FILE, buffer.getvalue())
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # e.g. a full disk: the previous checkpoint is untouched
        raise
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


def load_run_model(path: str | os.PathLike, task: str, name: str, config_cls, build, use_ema: bool = True):
    """A checkpoint of the run kind ``task`` (its config's ``task``; ``name`` says it in the error) ->
    (``build(cfg)`` with the checkpoint's weights, the EMA's where it has them and ``use_ema``, in eval
    mode and frozen; ``config_cls.from_dict`` of its config)."""
    state = load_checkpoint(path, trainer_state=False)
    if state.config.get("task") != task:
        raise ValueError(f"{path} is not a {name} checkpoint (its config has task={state.config.get('task')!r}, "
                         f"not {task!r})")
    cfg = config_cls.from_dict(state.config)
    model = build(cfg)
    model.load_state_dict(state.ema_state if use_ema and state.ema_state is not None else state.model_state)
    return model.eval().requires_grad_(False), cfg


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Only the run config of the checkpoint at ``path`` (no tensors read); FileNotFoundError if none."""
    found = resolve_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"no checkpoint at {path} (expected a directory with {CONFIG_FILE} and {MODEL_FILE})")
    return _parse_config((found / CONFIG_FILE).read_bytes(), found / CONFIG_FILE)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu",
                    trainer_state: bool = True) -> Checkpoint:
    """Read a checkpoint directory written by :func:`save_checkpoint`.

    Falls back to ``<path>.old`` when a save was killed between its renames. Tensors are loaded
    onto ``device`` (CPU by default). ``trainer_state=False`` skips ``trainer_state.pt``: only
    resuming needs it, so loaders for sampling and evaluation pass False and work on a checkpoint
    whose trainer state is missing or damaged.

    Raises:
        FileNotFoundError: neither ``path`` nor ``path.old`` holds a checkpoint.
        ValueError: a file of the checkpoint is damaged (named in the message).
    """
    for _ in range(3):  # a save may delete the directory we opened; then read the new one
        found = resolve_checkpoint(path)
        if found is None:
            raise FileNotFoundError(
                f"no checkpoint at {path} (expected a directory with {CONFIG_FILE} and {MODEL_FILE})")
        try:
            return _read_directory(found, torch.device(device), trainer_state)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(f"{path} kept changing while it was read (another process is saving it); try again")


def _read_directory(found: Path, device: torch.device, with_trainer_state: bool) -> Checkpoint:
    """Every file of one checkpoint directory, read relative to one open handle of it."""
    dir_fd = os.open(found, os.O_RDONLY | os.O_DIRECTORY)
    try:
        config = _parse_config(_read_bytes(dir_fd, CONFIG_FILE), found / CONFIG_FILE)
        model_state = _parse_safetensors(_read_bytes(dir_fd, MODEL_FILE), found / MODEL_FILE, device)
        ema_bytes = _read_bytes(dir_fd, EMA_FILE, optional=True)
        ema_state = None if ema_bytes is None else _parse_safetensors(ema_bytes, found / EMA_FILE, device)
        state = _read_bytes(dir_fd, TRAINER_STATE_FILE, optional=True) if with_trainer_state else None
        trainer = None if state is None else _parse_trainer_state(state, found / TRAINER_STATE_FILE, device)
    finally:
        os.close(dir_fd)
    return Checkpoint(config, model_state, ema_state, trainer, found)


def _read_bytes(dir_fd: int, name: str, optional: bool = False) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    except FileNotFoundError:
        if optional:
            return None
        raise
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _parse_config(data: bytes, file: Path) -> dict[str, Any]:
    try:
        config = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON ({err}); the checkpoint is damaged") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file} holds a {type(config).__name__}, not a config object; the checkpoint is damaged")
    return config


def _parse_safetensors(data: bytes, file: Path, device: torch.device) -> dict[str, torch.Tensor]:
    try:
        state = safetensors_load(data)
    except SafetensorError as err:
        raise ValueError(f"{file} is not a complete safetensors file ({err}); the checkpoint is damaged") from None
    return {k: v.to(device) for k, v in state.items()}


def _parse_trainer_state(data: bytes, file: Path, device: torch.device) -> dict[str, Any]:
    try:
        return torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for a damaged archive
        raise ValueError(f"{file} is damaged or not a latentdiff trainer state ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:200]}); the weights can still be sampled, but the run "
                         "cannot be resumed: start a new run from them with --init-from") from None


# ----------------------------------------------------------------------------- writers


def _write_bytes(file: Path, data: bytes) -> None:
    """Write and fsync ``data``; plain file I/O, so a full disk is an OSError with errno ENOSPC."""
    try:
        with open(file, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        if err.filename is None:  # write() and fsync() do not say which file
            raise OSError(err.errno, err.strerror, str(file)) from None
        raise


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
