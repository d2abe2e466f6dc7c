"""Timing and peak memory of one piece of work, measured the same way for every library.

CPU peak memory is the process's peak resident set size above its size before the work:
glibc's free lists are returned first (``malloc_trim``) and the kernel's high-water mark is
reset (``/proc/self/clear_refs``), so each measurement starts from what is really in use.
CUDA peak memory is ``max_memory_allocated`` above the allocation before the work.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import statistics
import time
from typing import Callable

import torch


def _proc_status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def _trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure(work: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Run ``work()`` once -> (wall seconds, peak memory in MiB above the start)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        _trim()
        with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current VmRSS
            f.write("5")
        base = _proc_status_mb("VmRSS")
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak = _proc_status_mb("VmHWM") - base
    return seconds, peak


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


class OtherLoad:
    """CPU time used by other processes while the benchmark ran, in cores (0 = quiet machine)."""

    def __enter__(self):
        self.wall, self.total, self.own = time.perf_counter(), self._busy(), self._own()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.wall
        other = (self._busy() - self.total) - (self._own() - self.own)
        self.cores = max(0.0, other / wall)

    @staticmethod
    def _busy() -> float:
        with open("/proc/stat") as f:
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
        return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
