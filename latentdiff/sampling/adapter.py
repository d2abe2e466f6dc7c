"""A diffusers-style scheduler over our stateless samplers (DESIGN.md section 3: "a thin adapter").

Code written for diffusers schedulers runs any registered sampler unchanged::

    sched = SamplerScheduler("dpmpp_2m", DiscreteSchedule("linear"), spacing="logsnr", parameterisation="eps")
    sched.set_timesteps(20)
    x = torch.randn(shape, generator=g) * sched.init_noise_sigma
    for t in sched.timesteps:
        out = model(sched.scale_model_input(x, t), t)
        x = sched.step(out, t, x, generator=g).prev_sample

Design. A stateless sampler owns its loop and calls ``denoise(x, sigma)`` once per model call; the
diffusers loop owns the loop and hands over one model output per ``step``. The adapter inverts
control by running the sampler in a worker thread whose ``denoise`` is a rendezvous: it hands
(x, sigma) to the caller and blocks until ``step`` brings the model output back, converted to
x0_hat = c_skip x + c_out F (``precond.coefficients``, exactly what ``precond.Denoiser`` does).
Only one of the two threads runs at any time (strict hand-off through two one-slot queues), so the
arithmetic and the order of random draws are those of the plain sampler call: the result is exact.
The sample that ``step`` returns is the x of the sampler's next model call (after the last call,
its final output), in the VE view; the model sees x / sqrt(1 + sigma^2) via ``scale_model_input``.

``timesteps`` lists one entry per model call (so heun's grid of n steps gives 2n - 1 entries, as
diffusers' HeunDiscreteScheduler does); it is recorded in ``set_timesteps`` by a dry run of the
sampler with a zero denoiser on a (1, 1) input, which is exact because no sampler's sigmas depend on x.
Random draws use the generator of the first ``step`` of a run (or the constructor's); diffusers
users pass the same generator to every step. A sampler that changes x before its first model call
(heun with S_churn at sigmas[0]) cannot follow the diffusers loop and raises.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import torch

from latentdiff.precond import coefficients
from latentdiff.sampling import get_sampler
from latentdiff.schedules import DiscreteSchedule, sigma_grid


@dataclass
class SamplerOutput:
    """What ``step`` returns: prev_sample (B, ...), the x of the next model call or the final sample."""

    prev_sample: torch.Tensor


class _Cancel(Exception):
    """Raised inside the worker's denoise to abandon a run (new set_timesteps or a new first step)."""


class SamplerScheduler:
    """Diffusers-style ``set_timesteps / scale_model_input / step`` around sampler ``name``.

    Args:
        name: a key of ``latentdiff.sampling.SAMPLERS``; unknown names list the valid ones.
        schedule: the model's discrete VP training schedule.
        spacing: a ``schedules.SPACINGS`` name for ``sigma_grid``.
        parameterisation: what the model returns: ``eps``, ``v`` or ``x0`` (of the VP model).
        generator: CPU generator for sampler noise when ``step`` gets none.
        opts: passed to the sampler (e.g. eta, S_churn).
    """

    order = 1

    def __init__(self, name: str, schedule: DiscreteSchedule, spacing: str = "trailing",
                 parameterisation: str = "eps", generator: torch.Generator | None = None, **opts):
        self.sampler, self.schedule, self.spacing = get_sampler(name), schedule, spacing
        coefficients(torch.ones(1), parameterisation)  # validates the name
        self.name, self.parameterisation, self.generator, self.opts = name, parameterisation, generator, opts
        self._worker = None

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        """Grid of ``num_inference_steps`` sigma steps; sets ``sigmas`` (n+1,) float64 and ``timesteps`` (calls,)."""
        self._stop()
        self.sigmas = sigma_grid(self.schedule, num_inference_steps, self.spacing)
        calls = []
        self.sampler(lambda x, s, c: (calls.append(float(s[0])), torch.zeros_like(x))[1],
                     torch.zeros(1, 1, dtype=torch.float64), self.sigmas,
                     generator=torch.Generator().manual_seed(0), **self.opts)
        self.call_sigmas = torch.tensor(calls, dtype=torch.float64)
        self.timesteps = self.schedule.sigma_to_t(self.call_sigmas).to(device)
        self.num_inference_steps, self._index = num_inference_steps, 0

    @property
    def init_noise_sigma(self) -> float:
        """Std of x_T in the VE view: sqrt(1 + sigmas[0]^2)."""
        return float((1 + self.sigmas[0] ** 2).sqrt())

    def _sigma(self) -> torch.Tensor:
        return self.call_sigmas[min(self._index, len(self.call_sigmas) - 1)]

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """x (B, ...) in the VE view at the current call's sigma -> the VP model input x / sqrt(1 + sigma^2)."""
        return sample * coefficients(self._sigma(), self.parameterisation)[2].to(sample.dtype)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True):
        """Feed one model output (B, ...) at the current call; returns prev_sample (B, ...) for the next call."""
        sigma = self._sigma()
        c_skip, c_out, _ = (c.to(sample.dtype) for c in coefficients(sigma, self.parameterisation))
        x0 = c_skip * sample + c_out * model_output.to(sample.dtype)
        if self._index == 0:
            self._start(sample, generator or self.generator)
        self._to_worker.put(x0)
        kind, value = self._from_worker.get()
        if kind == "error":
            self._worker = None
            raise value
        self._index += 1
        if kind == "done":
            self._worker = None
        return SamplerOutput(value) if return_dict else (value,)

    def _start(self, x_T: torch.Tensor, generator) -> None:
        """Start the sampler from x_T in a worker thread and wait for its first model call."""
        self._stop()
        self._to_worker, self._from_worker = queue.Queue(1), queue.Queue(1)
        self._worker = threading.Thread(target=self._run, args=(x_T, generator), daemon=True)
        self._worker.start()
        kind, value = self._from_worker.get()  # the first call's x
        if kind == "error":
            self._worker = None
            raise value
        if kind != "call" or not torch.equal(value, x_T):
            self._stop()
            raise ValueError(f"{self.name} with {self.opts} changes x before its first model call; "
                             "the diffusers loop cannot express that")

    def _run(self, x_T: torch.Tensor, generator) -> None:
        def denoise(x, sigma, cond):
            self._from_worker.put(("call", x))
            x0 = self._to_worker.get()
            if x0 is None:
                raise _Cancel
            return x0

        try:
            out = self.sampler(denoise, x_T, self.sigmas.to(x_T.device), generator=generator, **self.opts)
            self._from_worker.put(("done", out))
        except _Cancel:
            pass
        except Exception as e:  # handed to the caller's step
            self._from_worker.put(("error", e))

    def _stop(self) -> None:
        """Abandon a run in progress (its worker waits in denoise for a model output)."""
        if self._worker is not None and self._worker.is_alive():
            self._to_worker.put(None)
            self._worker.join()
        self._worker = None
