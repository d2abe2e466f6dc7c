"""The work that is timed: a training step, a forward pass, full sampling, autoencoder passes.

Every task is built once per library side (``build_tasks``) as a closure ``work()`` over
its own inputs; inputs are the same tensors for both sides (one seeded generator). Sampling
runs each library's own sampler code as a user would: latentdiff's ``sample_ddim`` /
``sample_dpmpp_2m`` with its ``Denoiser`` and batched ``CFGDenoiser``, and diffusers'
``DDIMScheduler`` / ``DPMSolverMultistepScheduler`` loops with the conditional and
unconditional halves in one batch (as its Stable Diffusion pipeline does). For L the latents
are decoded, inside the timed work.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F

from latentdiff.bench.networks import BenchConfig, Side
from latentdiff.precond import Denoiser
from latentdiff.sampling import CFGDenoiser, get_sampler, prior_noise
from latentdiff.schedules import DiscreteSchedule, sigma_grid
from latentdiff.training.optim import build_optimizer


@dataclasses.dataclass
class Task:
    """``work()`` does ``count`` units of ``unit`` (steps, images, ...); ``rate`` tasks report count / seconds."""
    name: str
    work: Callable[[], object]
    unit: str
    count: int = 1
    rate: bool = False

    def value(self, seconds: float) -> float:
        """The reported number for one timed call: count / s for rates, ms or s per unit otherwise."""
        if self.rate:
            return self.count / seconds
        return 1000 * seconds / self.count if self.unit.startswith("ms") else seconds


def inputs(cfg: BenchConfig, batch: int, seed: int = 0) -> dict:
    """x (B, C, S, S), integer timesteps t (B,), noise, and text states (B, L, D) or None."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, cfg.channels, cfg.image_size, cfg.image_size)
    text = torch.randn(batch, cfg.text_len, cfg.text_dim, generator=g) if cfg.text_len else None
    return {"x": torch.randn(shape, generator=g), "noise": torch.randn(shape, generator=g),
            "t": torch.randint(0, 1000, (batch,), generator=g), "text": text}


def to(batch: dict, device: torch.device, channels_last: bool) -> dict:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return {k: None if v is None else (v.to(device).contiguous(memory_format=fmt) if v.ndim == 4 else v.to(device))
            for k, v in batch.items()}


def train_task(side: Side, cfg: BenchConfig, device, bf16: bool, channels_last: bool, steps: int) -> Task:
    """``steps`` AdamW steps of the eps-prediction MSE (Ho et al. 2020, eq. 14) at the config's batch."""
    b = to(inputs(cfg, cfg.train_batch), device, channels_last)
    alpha_bar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0).to(device)
    optimizer = build_optimizer(side.net.parameters(), lr=1e-4)
    a = alpha_bar[b["t"]][:, None, None, None]
    x_t = a.sqrt() * b["x"] + (1 - a).sqrt() * b["noise"]

    def work():
        side.net.train()
        for _ in range(steps):
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                loss = F.mse_loss(side.eps(x_t, b["t"].float(), b["text"]).float(), b["noise"])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return Task("train", work, "steps/s", steps, rate=True)


def forward_task(side: Side, cfg: BenchConfig, device, bf16: bool, channels_last: bool, repeats: int) -> Task:
    b = to(inputs(cfg, cfg.forward_batch, seed=1), device, channels_last)

    @torch.inference_mode()
    def work():
        side.net.eval()
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            for _ in range(repeats):
                side.eps(b["x"], b["t"].float(), b["text"])
    return Task("forward", work, f"ms (batch {cfg.forward_batch})", repeats)


def guidance_inputs(cfg: BenchConfig, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Text states (n, L, D) of the prompts and of the empty prompt (zeros), or None without text."""
    if not cfg.text_len:
        return None, None
    text = inputs(cfg, cfg.sample_images, seed=2)["text"].to(device)
    return text, torch.zeros_like(text)


def latentdiff_sampling(side: Side, cfg: BenchConfig, device, bf16: bool, sampler: str, steps: int) -> Callable:
    """latentdiff's sampler on its Denoiser (eps, linear betas), CFG as one batched call."""
    schedule = DiscreteSchedule("linear", 1000)
    denoiser = Denoiser(side.net, schedule, "eps")
    sigmas = sigma_grid(schedule, steps, "trailing" if sampler == "ddim" else "karras")
    text, empty = guidance_inputs(cfg, device)
    model, cond = denoiser, None
    if text is not None:
        mask = torch.ones(text.shape[:2], dtype=torch.bool, device=device)
        cond = {"text": text, "text_mask": mask}
        model = CFGDenoiser(denoiser, cfg.guidance, {"text": empty, "text_mask": ~mask})
    shape = (cfg.sample_images, cfg.channels, cfg.image_size, cfg.image_size)

    @torch.inference_mode()
    def work():
        side.net.eval()
        x = prior_noise(shape, float(sigmas[0]), torch.Generator().manual_seed(3)).to(device)
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            x = get_sampler(sampler)(model, x, sigmas, cond=cond)
            return x if side.decode is None else side.decode(x)
    return work


def diffusers_sampling(side: Side, cfg: BenchConfig, device, bf16: bool, sampler: str, steps: int) -> Callable:
    """diffusers' scheduler loop; CFG with the unconditional and conditional halves in one batch."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if sampler == "ddim":
        scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    else:
        scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                                algorithm_type="dpmsolver++", solver_order=2,
                                                use_karras_sigmas=True)
    text, empty = guidance_inputs(cfg, device)
    states = None if text is None else torch.cat([empty, text])
    shape = (cfg.sample_images, cfg.channels, cfg.image_size, cfg.image_size)

    @torch.inference_mode()
    def work():
        side.net.eval()
        scheduler.set_timesteps(steps, device=device)
        x = (torch.randn(shape, generator=torch.Generator().manual_seed(3)) * scheduler.init_noise_sigma).to(device)
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            for t in scheduler.timesteps:
                if states is None:
                    eps = side.eps(scheduler.scale_model_input(x, t), t)
                else:
                    x_in = scheduler.scale_model_input(torch.cat([x, x]), t)
                    eps_u, eps_c = side.eps(x_in, t, states).chunk(2)
                    eps = eps_u + cfg.guidance * (eps_c - eps_u)
                x = scheduler.step(eps, t, x).prev_sample
            return x if side.decode is None else side.decode(x)
    return work


SAMPLING = {"S": [("ddim", 50), ("dpmpp_2m", 20)], "L": [("ddim", 50), ("dpmpp_2m", 25)]}


def build_tasks(side: Side, cfg: BenchConfig, device: torch.device, *, bf16: bool, channels_last: bool,
                train_steps: int = 3, forward_repeats: int = 3, sampling: bool = True) -> list[Task]:
    """The config's tasks for one side (its networks already on ``device``)."""
    tasks = [train_task(side, cfg, device, bf16, channels_last, train_steps),
             forward_task(side, cfg, device, bf16, channels_last, forward_repeats)]
    if side.vae is not None:
        px = to({"px": torch.randn(cfg.vae_images, 3, cfg.pixel_size, cfg.pixel_size,
                                   generator=torch.Generator().manual_seed(4))}, device, channels_last)["px"]
        z = side.encode(px).detach()

        def autoencode(fn, arg):
            @torch.inference_mode()
            def work():
                with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                    return fn(arg)
            return work
        tasks += [Task("vae encode", autoencode(side.encode, px), f"ms ({cfg.vae_images} images)"),
                  Task("vae decode", autoencode(side.decode, z), f"ms ({cfg.vae_images} images)")]
    if sampling:
        make = latentdiff_sampling if side.name == "latentdiff" else diffusers_sampling
        guided = " + CFG" if cfg.text_len else ""
        decoded = ", decoded" if side.vae is not None else ""
        for sampler, steps in SAMPLING[cfg.name]:
            tasks.append(Task(f"{sampler}-{steps}{guided}", make(side, cfg, device, bf16, sampler, steps),
                              f"s ({cfg.sample_images} images{decoded})"))
    return tasks
