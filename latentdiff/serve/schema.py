"""What ``POST /api/generate`` and ``POST /api/jobs`` accept, and the server's limits.

A request body is JSON; :func:`parse_request` turns it into a :class:`GenerateRequest` or raises
:class:`RequestError` naming the field: unknown fields, wrong types (a bool is not a number, "3" is
not an integer), NaN and infinities, negative or huge values, an unknown sampler or spacing (listing
the valid ones) and values over the server's :class:`ServeLimits` are all refused before anything
is loaded. What depends on the model (a prompt for a model without text, a class it does not have,
a LoRA adapter trained on another base) is checked against the model's capabilities by
``serve.engine.check_against_model``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_SEED = 2**32 - 1            # A1111's range; the page draws "random" seeds from it
MAX_PROMPT_CHARS = 2000
MAX_GUIDANCE = 100.0
MAX_CONTROL_SCALE = 10.0
MAX_LORA_SCALE = 4.0            # LoRA scales may be negative (an adapter subtracted), up to this size
MAX_ADAPTERS = 8
THRESHOLDS = ("none", "static", "dynamic")


@dataclasses.dataclass(frozen=True)
class ServeLimits:
    """Per-request limits (``latentdiff serve --max-steps ...``).

    Attributes:
        max_steps: sampling steps of one request (each stage of a cascade counts on its own).
        max_images: images per request (``n``).
        max_upload_mb: size of one uploaded file (a control image, a PNG to read) in MiB.
        max_pixels: pixels of one uploaded image (width x height); also Pillow's
            decompression-bomb limit ``PIL.Image.MAX_IMAGE_PIXELS``.
    """

    max_steps: int = 200
    max_images: int = 16
    max_upload_mb: float = 10.0
    max_pixels: int = 4096 * 4096

    def __post_init__(self):
        for name in ("max_steps", "max_images", "max_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not (math.isfinite(self.max_upload_mb) and self.max_upload_mb > 0):
            raise ValueError(f"--max-upload-mb must be a finite number > 0, got {self.max_upload_mb}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def max_body_bytes(self) -> int:
        """A JSON body may carry two base64 uploads (4/3 of their size) and the rest of the fields."""
        return 2 * (self.max_upload_bytes * 4 // 3 + 4) + 2**16


class RequestError(Exception):
    """A request the server refuses: HTTP ``status``, the ``field`` at fault (or None), a message."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message

    def body(self) -> dict:
        """The JSON error body every refusal has: {"error": "field: message", "field": ...}."""
        text = f"{self.field}: {self.message}" if self.field else self.message
        return {"error": text, "field": self.field}


def _finite(low: float, high: float, default: float | None = None):
    return Field(default, ge=low, le=high, allow_inf_nan=False)


class LoRAChoice(BaseModel):
    """One LoRA adapter of the model (a name from its ``lora`` list) and its scale."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(min_length=1, max_length=200)
    scale: float = _finite(-MAX_LORA_SCALE, MAX_LORA_SCALE, 1.0)


class GenerateRequest(BaseModel):
    """The body of ``POST /api/generate``. None means "the model's default" (its run's ``sample``
    section) for the sampling fields; ``seed`` "random" draws one, image i then has seed + i."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=200)
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    class_label: str | int | None = None
    sampler: str | None = None
    steps: int | None = Field(None, ge=1)
    spacing: str | None = None
    guidance: float | None = _finite(0.0, MAX_GUIDANCE)
    threshold: Literal["none", "static", "dynamic"] | None = None
    percentile: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | Literal["random"] = "random"
    n: int = Field(1, ge=1)
    control: str | None = None
    control_from_photo: bool = False
    control_scale: float = _finite(0.0, MAX_CONTROL_SCALE, 1.0)
    control_start: float = _finite(0.0, 1.0, 0.0)
    control_end: float = _finite(0.0, 1.0, 1.0)
    lora: list[LoRAChoice] | None = Field(None, max_length=MAX_ADAPTERS)
    upscaler: str | None = Field(None, min_length=1, max_length=200)
    variation_image: str | None = None
    size: str | None = Field(None, pattern=r"^[0-9]{1,5}x[0-9]{1,5}$")

    @field_validator("lora", mode="before")
    @classmethod
    def _adapter_strings(cls, value: Any) -> Any:
        """An adapter may also be given as "NAME:SCALE" (or "NAME"), as a PNG's parameters record it."""
        if not isinstance(value, list):
            return value
        out = []
        for item in value:
            if isinstance(item, str):
                name, sep, tail = item.rpartition(":")
                try:
                    item = {"name": name, "scale": float(tail)} if sep else {"name": item}
                except ValueError:
                    item = {"name": item}
            out.append(item)
        return out

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str | None) -> str | None:
        from latentdiff.sampling import SAMPLERS

        if value is not None and value not in SAMPLERS:
            raise ValueError(f"unknown sampler {value!r}; valid: {', '.join(sorted(SAMPLERS))}")
        return value

    @field_validator("spacing")
    @classmethod
    def _known_spacing(cls, value: str | None) -> str | None:
        from latentdiff.schedules import SPACINGS

        if value == "fitted":
            raise ValueError("the fitted spacing is not served (it fits a grid for minutes first); use "
                             f"`latentdiff sample --spacing fitted`, or one of {', '.join(SPACINGS)}")
        if value is not None and value not in SPACINGS:
            raise ValueError(f"unknown spacing {value!r}; valid: {', '.join(SPACINGS)}")
        return value

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 0 <= value <= MAX_SEED:
            raise ValueError(f"must be an integer in [0, {MAX_SEED}] or \"random\", got {value}")
        return value

    @model_validator(mode="after")
    def _control_window(self) -> "GenerateRequest":
        if not self.control_start < self.control_end:
            raise ValueError(f"control_start must be below control_end, got {self.control_start} and "
                             f"{self.control_end}")
        return self


def _first_error(err: ValidationError) -> RequestError:
    """A pydantic error as one RequestError naming the field, with the value it got."""
    e = err.errors(include_url=False)[0]
    names = set(GenerateRequest.model_fields) | set(LoRAChoice.model_fields)
    # a union's member (seed.int, class_label.str) is no part of the field's name
    field = ".".join(str(p) for i, p in enumerate(e["loc"]) if i == 0 or isinstance(p, int) or p in names) or None
    message = e["msg"].removeprefix("Value error, ")
    if field == "seed" and e["type"] in ("int_type", "literal_error"):
        message = f'must be an integer in [0, {MAX_SEED}] or "random"'
    if e["type"] == "extra_forbidden":
        message = f"unknown field; the fields are {', '.join(GenerateRequest.model_fields)}"
    elif "input" in e and not isinstance(e["input"], dict) and e["type"] not in ("missing", "value_error"):
        shown = repr(e["input"])
        message += f" (got {shown[:80]}{'...' if len(shown) > 80 else ''})"
    return RequestError(422, message, field)


def parse_request(body: Any, limits: ServeLimits) -> GenerateRequest:
    """A decoded JSON body -> GenerateRequest within ``limits``; RequestError (422) naming the field."""
    if not isinstance(body, dict):
        raise RequestError(422, f"the body must be a JSON object, got {type(body).__name__}")
    try:
        request = GenerateRequest.model_validate(body)
    except ValidationError as err:
        raise _first_error(err) from None
    if request.steps is not None and request.steps > limits.max_steps:
        raise RequestError(422, f"at most {limits.max_steps} on this server (--max-steps), got {request.steps}",
                           "steps")
    if request.n > limits.max_images:
        raise RequestError(422, f"at most {limits.max_images} images per request on this server (--max-images), "
                           f"got {request.n}", "n")
    if isinstance(request.seed, int) and request.seed + request.n - 1 > MAX_SEED:
        raise RequestError(422, f"seed + n - 1 (image i has seed + i) must be at most {MAX_SEED}", "seed")
    return request
