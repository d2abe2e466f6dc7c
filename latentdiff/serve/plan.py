"""A request checked against the model it names, before it is queued: the model by name (never a
path), every field the model cannot take refused with a message, the model's defaults filled in,
the seeds drawn, the uploads decoded. What comes out, a :class:`Plan`, is what the worker runs
(``serve.engine``) and what every PNG records.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

from PIL import Image

from latentdiff.serve.models import ModelRegistry, ServedModel
from latentdiff.serve.schema import MAX_SEED, GenerateRequest, RequestError, ServeLimits
from latentdiff.serve.uploads import decode_base64, open_upload


@dataclasses.dataclass(frozen=True)
class Plan:
    """A request ready to run on one model.

    Attributes:
        model: the model (its checkpoint and configs).
        adapters: LoRA adapters as ((checkpoint path, scale), ...), for the model cache.
        upscaler: the super-resolution stage after the model, or None.
        sampling: generate()'s sampler, steps, spacing, guidance, threshold and percentile.
        seeds: one per image (image i: seed + i).
        class_labels: one label index per image (None without classes).
        control: the uploaded control image (or photo) of a ControlNet model, decoded.
        variation: the source image of unCLIP variations, decoded.
        replay: per-image fields of the request with the defaults filled in (``image_parameters``).
    """

    model: ServedModel
    adapters: tuple[tuple[str, float], ...]
    upscaler: ServedModel | None
    sampling: dict[str, Any]
    seeds: list[int]
    class_labels: list[int] | None
    prompt: str | None
    negative_prompt: str
    control: Image.Image | None
    control_from_photo: bool
    control_scale: float
    control_steps: tuple[float, float]
    variation: Image.Image | None
    replay: dict[str, Any]

    @property
    def total_steps(self) -> int:
        """Sampler steps of the whole request (every image, every stage): the progress bar's length."""
        stage = self.upscaler.defaults.steps if self.upscaler is not None else 0
        return len(self.seeds) * (self.sampling["steps"] + stage)

    def image_parameters(self, i: int) -> dict[str, Any]:
        """The generation parameters of image i, as its PNG's ``parameters`` and ``latentdiff`` chunks
        record them: a request that makes exactly this image again (n = 1, its own seed)."""
        params = dict(self.replay, seed=self.seeds[i], n=1)
        if self.class_labels is not None:
            params["class_label"] = self.model.class_names[self.class_labels[i]]
        return params


def model_named(registry: ModelRegistry, name: str) -> ServedModel:
    """The model called ``name``: a path (``/``, ``\\``, ``..``, ``~``) is refused (422), an unknown name is
    404 listing the models."""
    if any(mark in name for mark in ("/", "\\", "..", "\0")) or name.startswith("~"):
        raise RequestError(422, "a model name from GET /api/models, not a path", "model")
    if name not in registry.models:
        shown = ", ".join(sorted(registry.models)[:20])
        raise RequestError(404, f"no model {name!r} on this server; models: {shown}", "model")
    return registry.models[name]


def _sampling(request: GenerateRequest, model: ServedModel, limits: ServeLimits) -> dict[str, Any]:
    d = model.defaults
    sampling = dict(sampler=request.sampler or d.sampler, steps=request.steps or d.steps,
                    spacing=request.spacing or (d.spacing if d.spacing != "fitted" else "karras"),
                    guidance=d.guidance if request.guidance is None else request.guidance,
                    threshold=request.threshold or d.threshold,
                    percentile=d.percentile if request.percentile is None else request.percentile)
    if sampling["steps"] > limits.max_steps:
        raise RequestError(422, f"the model's default of {sampling['steps']} steps is over this server's "
                           f"--max-steps {limits.max_steps}: give fewer", "steps")
    return sampling


def _class_labels(request: GenerateRequest, model: ServedModel) -> list[int] | None:
    """One label per image: the requested class (a name, case-insensitive, or an index) for all, else
    the classes in turn; refused for a model without classes."""
    names = model.class_names
    if not names:
        if request.class_label is not None:
            raise RequestError(422, f"model {model.name!r} is not class-conditional", "class_label")
        return None
    if request.class_label is None:
        return [i % len(names) for i in range(request.n)]
    text = str(request.class_label).strip()
    lowered = [name.lower() for name in names]
    if text.lower() in lowered:
        index = lowered.index(text.lower())
    elif text.isdigit() and int(text) < len(names):
        index = int(text)
    else:
        raise RequestError(422, f"{text!r} is not a class of {model.name!r}; classes: "
                           + ", ".join(f"{i} {name}" for i, name in enumerate(names)), "class_label")
    return [index] * request.n


def _adapters(request: GenerateRequest, model: ServedModel, registry: ModelRegistry) -> tuple:
    if not request.lora:  # None or []
        return ()
    from latentdiff.serve.loading import lora_available

    if not lora_available():
        raise RequestError(422, "LoRA adapters are not available in this installation", "lora")
    valid = registry.adapters_of(model)
    for choice in request.lora:
        if choice.name not in valid:
            raise RequestError(422, f"{choice.name!r} is not a LoRA adapter of {model.name!r}; adapters: "
                               f"{', '.join(valid) or 'none'}", "lora")
    return tuple((str(registry.adapters[c.name].path), float(c.scale)) for c in request.lora)


def _upload(text: str | None, field: str, limits: ServeLimits) -> Image.Image | None:
    return None if text is None else open_upload(decode_base64(text, field, limits), field, limits)


def _check_kind(request: GenerateRequest, model: ServedModel) -> None:
    """Refuse the fields of other kinds of model than ``model``."""
    if (model.run.text is None or model.run.unclip is not None) and (request.prompt or request.negative_prompt):
        field = "prompt" if request.prompt else "negative_prompt"
        what = "an unCLIP decoder: its variations come from the image alone" if model.run.unclip is not None \
            else "not a text-to-image model"
        raise RequestError(422, f"model {model.name!r} is {what}; it takes no prompt", field)
    if (model.task == "controlnet") != (request.control is not None):
        raise RequestError(422, f"model {model.name!r} is a ControlNet: give a control image" if request.control
                           is None else f"model {model.name!r} is not a ControlNet: it takes no control image",
                           "control")
    variations = model.run.unclip is not None
    if variations != (request.variation_image is not None):
        raise RequestError(422, f"model {model.name!r} is an unCLIP decoder: give the image to vary"
                           if variations else f"model {model.name!r} makes no variations (not an unCLIP decoder)",
                           "variation_image")


def plan_request(request: GenerateRequest, registry: ModelRegistry, limits: ServeLimits) -> Plan:
    """Check ``request`` against its model and decode its uploads -> Plan; RequestError naming the field."""
    model = model_named(registry, request.model)
    _check_kind(request, model)
    upscaler = None
    if request.upscaler is not None:
        valid = registry.upscalers_of(model)
        if request.upscaler not in valid:
            raise RequestError(422, f"{request.upscaler!r} is not an upscaler of {model.name!r}'s "
                               f"{model.output_size}px images; upscalers: {', '.join(valid) or 'none'}", "upscaler")
        upscaler = registry.upscalers[request.upscaler]
    sampling = _sampling(request, model, limits)
    seed = secrets.randbelow(MAX_SEED - request.n + 2) if request.seed == "random" else request.seed
    control = _upload(request.control, "control", limits)
    variation = _upload(request.variation_image, "variation_image", limits)
    adapters = _adapters(request, model, registry)
    prompt = (request.prompt or "") if model.run.text is not None and model.run.unclip is None else None
    size = model.output_size * (upscaler.run.superres.factor if upscaler is not None else 1)
    if request.size is not None and request.size != f"{size}x{size}":
        raise RequestError(422, f"model {model.name!r} makes {size}x{size} images"
                           + (f" through {upscaler.name!r}" if upscaler else "") + f", not {request.size}", "size")
    lora = [f"{c.name}:{c.scale}" for c in request.lora or ()] or None
    replay = dict(request.model_dump(), **sampling, prompt=prompt, size=f"{size}x{size}", control=None,
                  variation_image=None, lora=lora)
    if control is None:
        for key in ("control_scale", "control_start", "control_end", "control_from_photo"):
            replay.pop(key)
    return Plan(model, adapters, upscaler, sampling, [seed + i for i in range(request.n)],
                _class_labels(request, model), prompt, request.negative_prompt, control, request.control_from_photo,
                request.control_scale, (request.control_start, request.control_end), variation, replay)
