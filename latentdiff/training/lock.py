"""One writer per run folder: an advisory ``fcntl.flock`` on ``RUN/train.lock``.

``latentdiff train`` (every training run and the :class:`~latentdiff.training.Trainer`) holds the
lock while it writes the folder; a second ``train`` on the same folder fails at once with
:class:`RunLocked`, naming the PID that holds it. The kernel drops a flock when its holder exits,
however it exits (SIGKILL included), so a killed run never leaves the folder locked. The file
itself stays (deleting a lock file that another process may be opening is a race).

Only rank 0 of a multi-process run takes the lock (``RANK`` from torchrun / accelerate); the
lock is re-entrant within a process, counted, so nested holders (a run function and its
Trainer) share it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

LOCK_FILE = "train.lock"

_held: dict[Path, list] = {}  # resolved run folder -> [fd, hold count, whether acquire created the folder]


class RunLocked(RuntimeError):
    """Another process holds the run folder's lock."""


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def acquire(run_dir: str | os.PathLike) -> None:
    """Take (or re-enter) the lock of ``run_dir``, creating the folder; RunLocked if another process has it."""
    if not is_rank_zero():
        return
    path = Path(run_dir).resolve()
    if path in _held:
        _held[path][1] += 1
        return
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "an unknown process"
        os.close(fd)
        raise RunLocked(f"run folder {run_dir} is in use by {holder}: one `latentdiff train` writes a folder "
                        "at a time; wait for it, stop it, or use another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _held[path] = [fd, 1, created]


def release(run_dir: str | os.PathLike) -> None:
    """Leave the lock once; the last holder in this process unlocks it. A folder that the lock
    created and that holds nothing else (the run failed before writing) is removed again."""
    path = Path(run_dir).resolve()
    if path not in _held:
        return
    _held[path][1] -= 1
    if _held[path][1] == 0:
        fd, _, created = _held.pop(path)
        if created and os.listdir(path) == [LOCK_FILE]:
            os.unlink(path / LOCK_FILE)
            os.rmdir(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike):
    """``with run_lock(out_dir): ...`` holds the folder's lock for the block."""
    acquire(run_dir)
    try:
        yield
    finally:
        release(run_dir)
