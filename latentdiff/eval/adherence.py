"""Prompt adherence on ``shapes``: read colours, shapes, sizes, positions and relations back out of an
image with exact rules, and score an image against its prompt (DESIGN.md section 5).

Reading an image: backgrounds are grey, so a pixel belongs to an object when its saturation
(max - min channel) exceeds ``SATURATION``; its colour is the nearest palette colour. Per colour,
the largest 4-connected component, its holes filled, is the object. Shape from how much of its bounding box it fills
(square 1, circle pi/4, triangle 1/2), except that an object whose four corner cells (a third of
the box each way) are empty while its centre cross is full is the new shape, a cross
(``data.shapes.NEW_SHAPES``: corners 0, where a circle fills about half of each, a triangle three
quarters of its two lower ones and a square all of them); size from the box side, position from
the box centre's nearest grid line, relation from the centres' larger displacement.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import torch

from latentdiff.data.shapes import COLOURS, GRID, SIZES, parse_prompt, position_name

SATURATION = 60
CROSS_CORNERS = 0.15  # a cross: mean fill of the box's four corner cells below this ...
CROSS_ARMS = 0.6      # ... and mean fill of its five centre-cross cells above this
_PALETTE = np.array(list(COLOURS.values()), np.float64)
_NAMES = list(COLOURS)


def to_uint8_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3, S, S) float in [-1, 1] or (S, S, 3) uint8 -> (S, S, 3) uint8."""
    if isinstance(image, torch.Tensor):
        image = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return image


def read_scene(image: torch.Tensor | np.ndarray) -> list[dict]:
    """Objects found in one image, largest first: [{colour, shape, size, position, cy, cx, area}]."""
    img = to_uint8_hwc(image).astype(np.float64)
    S = img.shape[0]
    mask = img.max(2) - img.min(2) > SATURATION
    nearest = ((img[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1).argmin(-1)
    small_area = (SIZES["small"] * S) ** 2 / 2  # a small triangle
    found = []
    for k, name in enumerate(_NAMES):
        labels, count = scipy.ndimage.label(mask & (nearest == k))
        if count == 0:
            continue
        areas = np.bincount(labels.ravel())[1:]
        if areas.max() < 0.3 * small_area:
            continue
        ys, xs = np.nonzero(scipy.ndimage.binary_fill_holes(labels == 1 + int(areas.argmax())))
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        box = np.zeros((h, w), bool)
        box[ys - ys.min(), xs - xs.min()] = True
        side = max(h, w) / S
        cy, cx = (ys.min() + ys.max() + 1) / 2 / S, (xs.min() + xs.max() + 1) / 2 / S
        row, col = (int(np.abs(np.array(GRID) - v).argmin()) for v in (cy, cx))
        found.append({"colour": name, "shape": shape_of(box),
                      "size": "large" if side > (SIZES["small"] + SIZES["large"]) / 2 else "small",
                      "position": position_name(row, col), "cy": cy, "cx": cx, "area": len(ys)})
    return sorted(found, key=lambda o: -o["area"])


def shape_of(box: np.ndarray) -> str:
    """The shape of an object from its filled pixels inside their bounding box (h, w) bool: a cross when
    the box's four corner cells (a third of it each way, rounded down) are empty and its middle row and
    column bands full, else by the fill of the box."""
    h, w = box.shape
    a, b = h // 3, w // 3
    if a and b:
        corners = np.mean([box[:a, :b].mean(), box[:a, -b:].mean(), box[-a:, :b].mean(), box[-a:, -b:].mean()])
        arms = np.mean([box[:, b:w - b].mean(), box[a:h - a, :].mean()])
        if corners < CROSS_CORNERS and arms > CROSS_ARMS:
            return "cross"
    fill = box.mean()
    return "square" if fill > 0.9 else "circle" if fill > 0.64 else "triangle"


def relation_of(a: dict, b: dict) -> str:
    """Where object a is relative to object b: the axis of the larger displacement decides."""
    dy, dx = a["cy"] - b["cy"], a["cx"] - b["cx"]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def score(prompt: str, image: torch.Tensor | np.ndarray) -> dict:
    """Per-attribute correctness of one image for one prompt, and ``all_correct``.

    Each wanted object is matched to the found object of its colour (colour right = it exists);
    shape, size and (one object) position, or (two objects) the relation, are then compared.
    An image with more objects than the prompt asks for is never all-correct.
    """
    wanted, relation = parse_prompt(prompt)
    found = {o["colour"]: o for o in read_scene(image)}
    checks: dict[str, bool] = {}
    for i, w in enumerate(wanted):
        o = found.get(w["colour"])
        checks[f"colour_{i}"] = o is not None
        checks[f"shape_{i}"] = o is not None and o["shape"] == w["shape"]
        checks[f"size_{i}"] = o is not None and o["size"] == w["size"]
        if "position" in w:
            checks["position"] = o is not None and o["position"] == w["position"]
    if relation is not None:
        a, b = found.get(wanted[0]["colour"]), found.get(wanted[1]["colour"])
        checks["relation"] = a is not None and b is not None and relation_of(a, b) == relation
    checks["count"] = len(found) == len(wanted)
    return {"checks": checks, "all_correct": all(checks.values())}


def attribute_of(check: str) -> str:
    """"colour_0" -> "colour": the attribute a check is about."""
    return check.split("_")[0]


def summarize(prompts: list[str], scores: list[list[dict]]) -> dict:
    """Prompt adherence of K samples per prompt (``scores[i]``: the :func:`score` of each sample).

    Returns {"per_prompt": [{prompt, objects, all_correct, attributes: {attribute: accuracy}}],
    "overall": {"all_correct", "single_object_all_correct", "two_object_all_correct",
    "attributes": {...}, "n_prompts", "n_samples"}}; rates are fractions of samples.
    """
    per_prompt, by_objects, attributes = [], {1: [], 2: []}, {}
    for prompt, samples in zip(prompts, scores):
        wanted, _ = parse_prompt(prompt)
        correct = [s["all_correct"] for s in samples]
        by_objects[len(wanted)] += correct
        acc: dict[str, list[bool]] = {}
        for s in samples:
            for check, ok in s["checks"].items():
                acc.setdefault(attribute_of(check), []).append(ok)
        for name, oks in acc.items():
            attributes.setdefault(name, []).extend(oks)
        per_prompt.append({"prompt": prompt, "objects": len(wanted), "all_correct": float(np.mean(correct)),
                           "attributes": {k: float(np.mean(v)) for k, v in acc.items()}})
    everything = by_objects[1] + by_objects[2]
    rate = lambda v: float(np.mean(v)) if v else None  # noqa: E731
    overall = {"all_correct": rate(everything), "single_object_all_correct": rate(by_objects[1]),
               "two_object_all_correct": rate(by_objects[2]),
               "attributes": {k: rate(v) for k, v in attributes.items()},
               "n_prompts": len(prompts), "n_samples": len(everything)}
    return {"per_prompt": per_prompt, "overall": overall}
