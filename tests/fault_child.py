"""A `latentdiff train` that kills itself (SIGKILL) at the K-th filesystem step of its checkpoint
saves, or tears the K-th file write in half first; or, with kind ``enospc``, whose K-th file write
fails with ENOSPC. Run by tests/test_reliability.py.

usage: python fault_child.py K {kill|torn|enospc} -- latentdiff train arguments ...
"""

from __future__ import annotations

import errno
import os
import signal
import sys

from latentdiff.cli.main import main
from latentdiff.io import checkpoint as ckpt

k, kind, argv = int(sys.argv[1]), sys.argv[2], sys.argv[4:]
count = [0]


def step(real):
    """Wrap a filesystem step of save_checkpoint: the K-th one dies (before or, torn, in the middle)."""

    def wrapped(*args, **kwargs):
        count[0] += 1
        if count[0] == k:
            if kind == "enospc" and real is real_write:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[0]))
            if kind == "torn" and real is real_write:
                file, data = args
                real(file, data[: len(data) // 2])  # half the bytes reach the disk
            if kind != "enospc":
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    return wrapped


real_write = ckpt._write_bytes
ckpt._write_bytes = step(real_write)
ckpt._fsync_dir = step(ckpt._fsync_dir)
ckpt._swap_in = step(ckpt._swap_in)
ckpt.os.rename = step(os.rename)
ckpt.shutil.rmtree = step(ckpt.shutil.rmtree)
main(argv)
