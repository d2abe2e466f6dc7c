"""Generation parameters inside PNG files, as the community's tools write them.

Every PNG latentdiff saves from ``sample`` or ``serve`` carries two text chunks:

* ``parameters``: AUTOMATIC1111's format, which most tools read (A1111, ComfyUI importers, civitai)::

      a red circle left of a blue square
      Negative prompt: blurry
      Steps: 20, Sampler: dpmpp_2m, CFG scale: 3.0, Seed: 7, Size: 32x32, Model: shapes-t2i, Spacing: karras

  the prompt (any number of lines), an optional ``Negative prompt:`` line, then one line of
  ``key: value`` pairs. The first six keys are A1111's own; latentdiff adds ``Spacing``,
  ``Threshold``, ``Class``, ``Control scale`` and ``LoRA`` where they apply.
* ``latentdiff``: JSON of the full request and the checkpoint's config, for exact replay.

:func:`parse_parameters` reads the ``parameters`` text back into fields, so a PNG dropped on the
web page restores what made it.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

from PIL import Image, PngImagePlugin

# A1111 key -> our request field, in the order written
KEYS = {"Steps": "steps", "Sampler": "sampler", "CFG scale": "guidance", "Seed": "seed", "Size": "size",
        "Model": "model", "Spacing": "spacing", "Threshold": "threshold", "Class": "class_label",
        "Control scale": "control_scale", "LoRA": "lora"}
_INTS, _FLOATS = {"steps", "seed"}, {"guidance"}


def parameters_text(params: dict[str, Any]) -> str:
    """Request fields (prompt, negative_prompt, steps, sampler, guidance, seed, size, model, ...) -> the
    A1111 ``parameters`` text. Fields that are None or absent are left out."""
    lines = [str(params.get("prompt") or "")]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    pairs = [f"{key}: {_text(params[field])}" for key, field in KEYS.items() if params.get(field) is not None]
    lines.append(", ".join(pairs))
    return "\n".join(lines)


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value).replace(",", " ").replace("\n", " ")  # a value never breaks the key list


def parse_parameters(text: str) -> dict[str, Any]:
    """The A1111 ``parameters`` text -> request fields (the inverse of :func:`parameters_text` on its
    keys; unknown keys are kept under their own names). Raises ValueError on text with no key line."""
    lines = text.rstrip("\n").split("\n")
    if not lines or not re.match(r"^\s*[A-Za-z][\w ]*: ", lines[-1]):
        raise ValueError("not an AUTOMATIC1111 parameters text (its last line must be 'Steps: ..., ...')")
    fields: dict[str, Any] = {}
    for pair in re.split(r",\s*(?=[A-Za-z][\w ]*: )", lines[-1]):
        key, _, value = pair.partition(": ")
        field = KEYS.get(key.strip(), key.strip())
        fields[field] = int(value) if field in _INTS else float(value) if field in _FLOATS else value.strip()
    body = lines[:-1]
    negative = [i for i, line in enumerate(body) if line.startswith("Negative prompt: ")]
    if negative:
        i = negative[0]
        fields["negative_prompt"] = "\n".join([body[i][len("Negative prompt: "):], *body[i + 1:]])
        body = body[:i]
    fields["prompt"] = "\n".join(body)
    if "control_scale" in fields:
        fields["control_scale"] = [float(v) for v in str(fields["control_scale"]).split()]
    return fields


def png_bytes(image: Image.Image, params: dict[str, Any], config: dict[str, Any] | None = None) -> bytes:
    """The PNG of ``image`` with the ``parameters`` chunk of ``params`` and the ``latentdiff`` JSON chunk
    ({"request": params, "config": config})."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters_text(params))
    info.add_text("latentdiff", json.dumps({"request": params, "config": config}, default=str))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_png_parameters(data: bytes) -> tuple[str | None, dict | None]:
    """A PNG's (``parameters`` text, ``latentdiff`` JSON) chunks; None for a chunk it does not have."""
    with Image.open(io.BytesIO(data)) as image:
        text = image.text.get("parameters") if hasattr(image, "text") else None
        raw = image.text.get("latentdiff") if hasattr(image, "text") else None
    return text, (json.loads(raw) if raw else None)
