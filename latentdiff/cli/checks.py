"""Command-line values checked before any model is loaded: one ValueError naming the flag and the value.

``sample`` and ``eval`` call :func:`check_sampling_args` first, so that ``--n 0``, ``--guidance nan`` or
an ``--out`` that is a folder fail in a fraction of a second, not after loading and sampling
(the CLI's error handler turns the ValueError into ``latentdiff COMMAND: ...``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def _at_least_one(flag: str, value) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{flag} must be at least 1, got {value}")


def check_output_path(flag: str, path: str | None) -> None:
    """``path`` can be written as a file: not a folder, and its folder exists or can be created."""
    if path is None:
        return
    p = Path(path).expanduser()
    if not str(path).strip():
        raise ValueError(f"{flag} is empty: give a file name")
    if p.is_dir() or str(path).endswith(os.sep):
        raise ValueError(f"{flag} {path} is a folder: give a file name, e.g. {p / 'samples.png'}")
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"{flag} {path}: the file exists and is not writable")
    parent = p.absolute().parent
    while not parent.exists():  # the first existing ancestor must be a writable folder
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: {parent} is a file, so the folder cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: the folder {parent} is not writable")


def check_sampling_args(args) -> None:
    """The sampling flags of ``sample`` / ``eval`` that are present on ``args`` (None: the run's default):
    names first (sampler, spacing), then counts and scales, then the output paths."""
    from latentdiff.sampling import SAMPLERS
    from latentdiff.schedules import SPACINGS

    sampler = getattr(args, "sampler", None)
    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"--sampler {sampler!r} is not a sampler; valid: {', '.join(sorted(SAMPLERS))} "
                         "(`latentdiff samplers` describes them)")
    spacing = getattr(args, "spacing", None)
    if spacing is not None and spacing not in (*SPACINGS, "fitted"):
        raise ValueError(f"--spacing {spacing!r} is not a spacing; valid: {', '.join(SPACINGS)}, fitted")
    for flag in ("n", "nrow", "steps", "n_per_prompt", "n_t", "probes", "ode_n", "ode_batch_size"):
        _at_least_one("--" + flag.replace("_", "-"), getattr(args, flag, None))
    guidance = getattr(args, "guidance", None)
    if guidance is not None and not (math.isfinite(guidance) and guidance >= 0):
        raise ValueError(f"--guidance must be a finite number >= 0 (1 = no guidance), got {guidance}")
    percentile = getattr(args, "percentile", None)
    if percentile is not None and not 0 < percentile <= 1:
        raise ValueError(f"--percentile must be in (0, 1], got {percentile}")
    for scale in getattr(args, "control_scale", None) or ():
        if not math.isfinite(scale):
            raise ValueError(f"--control-scale must be a finite number, got {scale}")
    start, end = getattr(args, "control_start", 0.0), getattr(args, "control_end", 1.0)
    if not 0 <= start < end <= 1:
        raise ValueError(f"--control-start and --control-end must satisfy 0 <= start < end <= 1, got {start}, {end}")
    for flag in ("out", "trajectory", "json", "png"):
        check_output_path("--" + flag, getattr(args, flag, None))


def prompt_rows(prompts: list[str], n: int) -> list[str]:
    """The grid prompts a ``sample --n N`` of a text model without ``--prompt`` shows: exactly n
    images, in rows of equal length, over the most prompts (at most all of them) that divide n."""
    rows = max(k for k in range(1, min(n, len(prompts)) + 1) if n % k == 0)
    return prompts[:rows]


def read_user_image(path: str, channels: int, size: int | None, reader: str):
    """A user's image file as (1, channels, H, W) in [-1, 1], with a note on stderr where it is
    converted to ``channels`` or resized to ``size`` (None: kept) for ``reader`` (what reads it)."""
    import sys

    from latentdiff.io.images import load_image, open_image

    image = open_image(path)  # refuses a file that is not an image, by name
    grey = image.mode in ("L", "LA")
    if grey != (channels == 1):
        print(f"note: {path} is {image.mode}; converted to {'grey' if channels == 1 else 'RGB'} for {reader}",
              file=sys.stderr)
    if size is not None and image.size != (size, size):
        print(f"note: {path} is {image.size[0]}x{image.size[1]}; resized to {size}x{size} for {reader}",
              file=sys.stderr)
    return load_image(path, size=size, channels=channels)


def write_json(path: str | None, data: dict) -> None:
    """Write ``data`` as indented JSON to ``path`` (its folder created); nothing when path is None."""
    if path:
        import json

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2))
