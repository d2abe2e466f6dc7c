"""Running a :class:`~latentdiff.serve.plan.Plan`: each image through ``pipelines.generate`` as ``latentdiff
sample`` makes it, then the upscaler where one is chosen, every step reported (and stoppable) through
the samplers' ``callback``. No maths here.

Image i of a request is ``generate(denoiser, 1, ..., seed=seed + i)``: every image has its own seed, so
the seed in a PNG's parameters makes that image again on its own (as AUTOMATIC1111's seeds do), at the
cost of one sampler run per image. An upscaled image is ``pipelines.cascade``'s: the stage samples
with seed + 1000 and augments its input with noise of seed + 1001 (``run_cascade``'s seeds for n = 1).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from PIL import Image

from latentdiff.io.images import to_uint8
from latentdiff.io.png_meta import parameters_text, png_bytes
from latentdiff.serve.loading import LoadedModel, ModelCache
from latentdiff.serve.plan import Plan
from latentdiff.serve.uploads import image_to_signed, image_to_unit

# on_step(steps done in the whole request, x0 prediction (1, C, h, w), the autoencoder that decodes it or None)
StepHook = Callable[[int, torch.Tensor, "torch.nn.Module | None"], None]


class Stopped(Exception):
    """Raised from a sampler's callback to stop a request: ``reason`` "cancelled" or "timed out"."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass
class GeneratedImage:
    """One result: the image (C, H, W) in [-1, 1], its generation parameters, and its PNG (with the
    ``parameters`` and ``latentdiff`` chunks)."""

    image: torch.Tensor
    parameters: dict
    png: bytes

    @property
    def parameters_text(self) -> str:
        return parameters_text(self.parameters)


def picture(image: torch.Tensor) -> Image.Image:
    """(C, H, W) in [-1, 1] -> a Pillow image (grey for one channel)."""
    pixels = to_uint8(image[None])[0]
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)


def _control(plan: Plan, loaded: LoadedModel) -> torch.Tensor:
    """The plan's control image as the ControlNet reads it (1, C_c, S, S): the upload itself, or the
    ControlNet's own kind of map (edges, mask) computed from an uploaded photo."""
    from latentdiff.pipelines import prepare_control

    cn = loaded.controlnet
    if plan.control_from_photo:
        from latentdiff.data.control import control_maps

        photo = image_to_signed(plan.control, channels=3 if plan.control.mode in ("RGB", "RGBA") else 1)
        unit = control_maps(photo, cn.control).float()
    else:
        unit = image_to_unit(plan.control)
    return prepare_control(unit, cn.controlnet, name="control")


def _variation_embeds(plan: Plan, loaded: LoadedModel) -> torch.Tensor:
    """The unit CLIP image embedding (1, D) of the image to vary, read as ``latentdiff vary`` reads a file."""
    clip = loaded.decoder.clip_cfg.clip
    return loaded.decoder.embed(image_to_signed(plan.variation, clip.in_channels, clip.image_size))


class _Counter:
    """The sampler callback of one generate() call: steps done so far in the request -> ``on_step``."""

    def __init__(self, on_step: StepHook | None, done: int, autoencoder):
        self.on_step, self.done, self.autoencoder = on_step, done, autoencoder

    def __call__(self, i, sigma, x, x0) -> None:
        if self.on_step is not None:
            self.on_step(self.done + i + 1, x0, self.autoencoder)


def _conditioning(plan: Plan, loaded: LoadedModel, cache: ModelCache, i: int, control, embeds):
    from latentdiff.pipelines import Conditioning

    labels = None if plan.class_labels is None else torch.tensor([plan.class_labels[i]])
    prompts = None if plan.prompt is None else [plan.prompt]
    return Conditioning(class_labels=labels, prompts=prompts, negative_prompt=plan.negative_prompt,
                        text_encoder=cache.text_encoder(loaded.run) if prompts else None, control=control,
                        control_scale=(plan.control_scale,), control_steps=plan.control_steps, image_embeds=embeds)


def _upscaled(plan: Plan, cache: ModelCache, image: torch.Tensor, seed: int, counter: _Counter) -> torch.Tensor:
    """One image (1, C, h, w) through the plan's upscaler, as ``pipelines.cascade.upscale`` does it."""
    from latentdiff.objectives.superres import augment_at_level
    from latentdiff.pipelines import Conditioning, generate
    from latentdiff.pipelines.diffusion import samples_in_bf16

    stage = cache.get(plan.upscaler).stage
    prompts = [plan.prompt or ""] if stage.cfg.text is not None else None
    return generate(stage.denoiser, 1,
                    Conditioning(prompts=prompts, negative_prompt=plan.negative_prompt,
                                 text_encoder=cache.text_encoder(stage.cfg) if prompts else None,
                                 shared=augment_at_level(image, stage.level, seed + 1)),
                    seed=seed, bf16=samples_in_bf16(stage.cfg), callback=counter, **stage.sampling())


@torch.no_grad()
def run_plan(plan: Plan, cache: ModelCache, on_step: StepHook | None = None) -> list[GeneratedImage]:
    """Every image of ``plan`` -> GeneratedImages; ``on_step`` after each sampler step (raising
    :class:`Stopped` from it stops the request there)."""
    from latentdiff.pipelines import generate
    from latentdiff.pipelines.diffusion import samples_in_bf16

    loaded = cache.get(plan.model, plan.adapters)
    control = _control(plan, loaded) if plan.control is not None else None
    embeds = _variation_embeds(plan, loaded) if plan.variation is not None else None
    # an unCLIP decoder samples as Decoder.decode does (bf16 where it trained so); the others as `sample`
    bf16 = samples_in_bf16(loaded.run) if loaded.decoder is not None else False
    stage_steps = plan.upscaler.defaults.steps if plan.upscaler is not None else 0
    results = []
    for i, seed in enumerate(plan.seeds):
        done = i * (plan.sampling["steps"] + stage_steps)
        image = generate(loaded.denoiser, 1, _conditioning(plan, loaded, cache, i, control, embeds),
                         **plan.sampling, seed=seed, bf16=bf16, autoencoder=loaded.autoencoder,
                         callback=_Counter(on_step, done, loaded.autoencoder))
        if plan.upscaler is not None:
            counter = _Counter(on_step, done + plan.sampling["steps"], None)
            image = _upscaled(plan, cache, image, seed + 1000, counter)
        params = plan.image_parameters(i)
        results.append(GeneratedImage(image[0], params, png_bytes(picture(image[0]), params, plan.model.config)))
    return results


def preview_png(x0: torch.Tensor, autoencoder=None) -> bytes:
    """The PNG of an x0 prediction (1, C, h, w) (a latent one decoded first), for the live preview."""
    import io

    with torch.no_grad():
        if autoencoder is None:
            image = x0.float()
        else:
            weight = next(iter(autoencoder.parameters()), None)  # the identity of pixel space has none
            image = autoencoder.decode(x0.float().to(weight.device if weight is not None else "cpu")).cpu()
    buffer = io.BytesIO()
    picture(image[0].clamp(-1, 1)).save(buffer, format="PNG")
    return buffer.getvalue()
