"""The server's one request queue: ``concurrency`` worker threads, at most ``max_queue`` requests waiting
(the next one is refused at once: the server answers 429), a deadline of ``timeout`` seconds per request
from the moment it is queued (checked at every sampler step and before it starts), and cancellation at
the next sampler step. Finished jobs are kept for a while (``keep``, at most ``keep_seconds``) so that
the page can fetch their results; memory is therefore bounded by the queue, the kept jobs and the model
cache.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import secrets
import threading
import time
from typing import Any, Callable

import torch

from latentdiff.serve.engine import Stopped
from latentdiff.serve.schema import RequestError

STATES = ("queued", "running", "done", "cancelled", "error")


class QueueFull(Exception):
    """The queue holds ``max_queue`` waiting requests already."""


@dataclasses.dataclass
class Job:
    """One request in the queue. ``state`` is one of STATES; ``step``/``steps`` the sampler steps done
    and in all; ``preview`` the latest x0 prediction (and the autoencoder that decodes it); ``result``
    what ``run`` returned; ``error``/``status`` why it failed and the HTTP status that says so."""

    id: str
    plan: Any
    deadline: float
    steps: int = 0
    step: int = 0
    state: str = "queued"
    preview: tuple | None = None
    result: Any = None
    error: str | None = None
    status: int = 200
    finished_at: float | None = None
    order: int = 0
    cancel_requested: threading.Event = dataclasses.field(default_factory=threading.Event)
    finished: threading.Event = dataclasses.field(default_factory=threading.Event)
    _callbacks: list = dataclasses.field(default_factory=list)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def when_finished(self, callback: Callable[["Job"], None]) -> None:
        """Call ``callback(job)`` once the job is finished (at once if it is)."""
        with self._lock:
            if not self.finished.is_set():
                self._callbacks.append(callback)
                return
        callback(self)

    def finish(self, state: str, result: Any = None, error: str | None = None, status: int = 200) -> None:
        with self._lock:
            if self.finished.is_set():
                return
            self.state, self.result, self.error, self.status = state, result, error, status
            self.finished_at = time.monotonic()
            self.finished.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)


class JobQueue:
    """Jobs run by ``run(plan, on_step)`` on ``concurrency`` worker threads (started with the first job)."""

    def __init__(self, run: Callable, concurrency: int = 1, max_queue: int = 8, timeout: float = 300.0,
                 keep: int = 32, keep_seconds: float = 600.0):
        if concurrency < 1 or max_queue < 0 or not timeout > 0:
            raise ValueError(f"need concurrency >= 1, max_queue >= 0, timeout > 0; got {concurrency}, {max_queue}, "
                             f"{timeout}")
        self.run, self.concurrency, self.max_queue, self.timeout = run, concurrency, max_queue, timeout
        self.keep, self.keep_seconds = keep, keep_seconds
        self._jobs: dict[str, Job] = {}
        self._waiting: collections.deque[Job] = collections.deque()
        self._running = 0
        self._condition = threading.Condition()
        self._workers: list[threading.Thread] = []
        self._closed = False
        self._order = itertools.count()

    # ------------------------------------------------------------------ submitting and reading
    def submit(self, plan: Any, steps: int) -> Job:
        """Queue ``plan`` (``steps``: its sampler steps in all); QueueFull when ``max_queue`` are waiting."""
        with self._condition:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            idle = max(0, self.concurrency - self._running)
            if len(self._waiting) >= self.max_queue + idle:
                raise QueueFull(f"the queue is full ({len(self._waiting)} requests waiting, {self._running} "
                                "running); try again shortly")
            job = Job(secrets.token_hex(8), plan, time.monotonic() + self.timeout, steps=steps,
                      order=next(self._order))
            self._forget_old()
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._start_workers()
            self._condition.notify()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._condition:
            return self._jobs.get(job_id)

    def forget(self, job: Job) -> None:
        """Drop a finished job (its result was delivered)."""
        with self._condition:
            if job.finished.is_set():
                self._jobs.pop(job.id, None)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a job: a waiting one at once, a running one at its next sampler step."""
        with self._condition:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            job.cancel_requested.set()
            if job in self._waiting:
                self._waiting.remove(job)
                job.finish("cancelled", error="cancelled before it started", status=409)
        return job

    def stats(self) -> dict:
        with self._condition:
            return {"waiting": len(self._waiting), "running": self._running, "concurrency": self.concurrency,
                    "max_queue": self.max_queue, "timeout_s": self.timeout}

    def close(self) -> None:
        """Stop the workers: waiting jobs are cancelled, running ones at their next sampler step."""
        with self._condition:
            self._closed = True
            for job in self._waiting:
                job.finish("cancelled", error="the server shut down", status=503)
            self._waiting.clear()
            for job in self._jobs.values():
                job.cancel_requested.set()
            self._condition.notify_all()
        for worker in self._workers:
            worker.join(timeout=5)

    # ------------------------------------------------------------------ workers
    def _start_workers(self) -> None:
        while len(self._workers) < self.concurrency:
            worker = threading.Thread(target=self._work, name=f"latentdiff-serve-{len(self._workers)}", daemon=True)
            self._workers.append(worker)
            worker.start()

    def _forget_old(self) -> None:
        """Drop finished jobs beyond ``keep`` or older than ``keep_seconds`` (the caller holds the lock)."""
        now = time.monotonic()
        finished = sorted((j for j in self._jobs.values() if j.finished.is_set()), key=lambda j: j.order)
        for i, job in enumerate(finished):
            if i < len(finished) - self.keep or now - job.finished_at > self.keep_seconds:
                del self._jobs[job.id]

    def _work(self) -> None:
        while True:
            with self._condition:
                while not self._waiting and not self._closed:
                    self._condition.wait()
                if self._closed:
                    return
                job = self._waiting.popleft()
                self._running += 1
            try:
                self._run_one(job)
            finally:
                with self._condition:
                    self._running -= 1

    def _run_one(self, job: Job) -> None:
        if time.monotonic() > job.deadline:
            job.finish("error", error=f"timed out after {self.timeout:g} s in the queue", status=504)
            return
        job.state = "running"

        def on_step(done: int, x0: torch.Tensor, autoencoder) -> None:
            job.step = done
            job.preview = (x0.detach()[:1].float().cpu().clone(), autoencoder)
            if job.cancel_requested.is_set():
                raise Stopped("cancelled")
            if time.monotonic() > job.deadline:
                raise Stopped("timed out")

        try:
            result = self.run(job.plan, on_step)
        except Stopped as stop:
            if stop.reason == "cancelled":
                closed = self._closed
                job.finish("cancelled", error="the server shut down" if closed else "cancelled",
                           status=503 if closed else 409)
            else:
                job.finish("error", error=f"timed out after {self.timeout:g} s (--timeout)", status=504)
        except RequestError as err:
            job.finish("error", error=err.body()["error"], status=err.status)
        except ValueError as err:  # what the library refuses (too few steps for a sampler, ...)
            job.finish("error", error=" ".join(str(err).split()), status=422)
        except Exception as err:  # noqa: BLE001 - reported to the client; the worker stays up
            job.finish("error", error=f"internal error, {type(err).__name__}: {' '.join(str(err).split())[:500]}",
                       status=500)
        else:
            job.step = job.steps
            job.finish("done", result=result)
