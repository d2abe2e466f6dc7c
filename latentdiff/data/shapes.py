"""``shapes``: a procedural captioned dataset whose every attribute is known exactly.

Each image holds one or two shapes (circle, square, triangle) in one of six saturated colours, at
two sizes, on a plain or striped background that is always grey (R = G = B), so a colour is
read back from a pixel exactly. Item i of a split is a pure function of (seed, split, i).
``NEW_SHAPES`` (a cross: an upright plus sign with arms a third of its box wide) are drawn and
parsed too but never occur in the dataset: they are the new concept a LoRA is taught
(``concept_scenes``, ``benchmarks/lora_concept.py``).

Captions, in one grammar (``caption_of`` writes it, ``parse_prompt`` reads it)::

    a {size} {colour} {shape} in the {position}                  one object
    a {size} {colour} {shape} {relation} a {size} {colour} {shape}    two objects

with positions on a 3 x 3 grid ("top left", ..., "center", ...) and relations "left of",
"right of", "above", "below". Every image also carries a deliberately poor alt-text caption
(short, partial or generic, as web alt-text is) and its attributes.

Held out: (colour, shape) pairs in ``HELD_OUT_PAIRS`` never occur in training images; prompts
built on them (``held_out_prompts``) measure composition on combinations never seen.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

COLOURS = {"red": (220, 40, 40), "orange": (240, 140, 30), "yellow": (235, 215, 40),
           "green": (40, 180, 60), "blue": (50, 80, 230), "purple": (150, 60, 200)}
SHAPES = ("circle", "square", "triangle")
NEW_SHAPES = ("cross",)                        # drawn and read, never in the dataset: a concept to teach
SIZES = {"small": 0.3, "large": 0.45}         # side / diameter as a fraction of the image side
GRID = (0.25, 0.5, 0.75)                       # object centres as fractions of the side
ROWS, COLS = ("top", "", "bottom"), ("left", "", "right")
RELATIONS = ("left of", "right of", "above", "below")
HELD_OUT_PAIRS = (("red", "triangle"), ("blue", "circle"), ("yellow", "square"))
VERSION = 2  # bump whenever drawing or sampling changes, so cached features and latents are not reused


def position_name(row: int, col: int) -> str:
    """(row, col) in {0, 1, 2}^2 -> "top left", "top", "left", "center", ..."""
    name = " ".join(w for w in (ROWS[row], COLS[col]) if w)
    return name or "center"


POSITIONS = {position_name(r, c): (r, c) for r in range(3) for c in range(3)}


@dataclasses.dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    row: int
    col: int


def caption_of(objs: list[Obj], relation: str | None = None) -> str:
    """The exact caption of one object, or of two objects in ``relation`` (first relative to second)."""
    a = objs[0]
    first = f"a {a.size} {a.colour} {a.shape}"
    if len(objs) == 1:
        return f"{first} in the {position_name(a.row, a.col)}"
    b = objs[1]
    return f"{first} {relation} a {b.size} {b.colour} {b.shape}"


def mirrored(objs: list[Obj], relation: str | None) -> tuple[list[Obj], str | None]:
    """The scene flipped left to right (every shape here is mirror-symmetric): columns mirrored,
    "left of" and "right of" swapped."""
    swap = {"left of": "right of", "right of": "left of"}
    return [dataclasses.replace(o, col=2 - o.col) for o in objs], swap.get(relation, relation)


INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def canonical(objs: list[Obj], relation: str | None) -> tuple[list[Obj], str | None]:
    """The same scene stated left or upper object first ("right of" / "below" turned around)."""
    return (objs[::-1], INVERSE[relation]) if relation in ("right of", "below") else (objs, relation)


def turned_caption(caption: str) -> str:
    """A two-object caption stated the other way round ("A left of B" -> "B right of A"); any other
    caption, or one outside the grammar, unchanged."""
    try:
        objs, relation = parse_prompt(caption)
    except ValueError:
        return caption
    if relation is None:
        return caption
    a, b = (f"a {o['size']} {o['colour']} {o['shape']}" for o in objs)
    return f"{b} {INVERSE[relation]} {a}"


def short_caption_of(objs: list[Obj]) -> str:
    """The short caption of a scene (DALL·E 3's short style, "the main subject only"): the first
    object's colour and shape, "a red circle"."""
    return f"a {objs[0].colour} {objs[0].shape}"


def parse_prompt(prompt: str) -> tuple[list[dict], str | None]:
    """Inverse of :func:`caption_of`: -> ([{shape, colour, size, position?}, ...], relation or None)."""
    words = prompt.strip().lower().split()

    def obj(at: int) -> dict:
        if (len(words) < at + 4 or words[at] != "a" or words[at + 1] not in SIZES or words[at + 2] not in COLOURS
                or words[at + 3] not in SHAPES + NEW_SHAPES):
            raise ValueError(f"not in the shapes caption grammar: {prompt!r}")
        return {"size": words[at + 1], "colour": words[at + 2], "shape": words[at + 3]}

    first = obj(0)
    rest = " ".join(words[4:])
    if rest.startswith("in the "):
        position = rest[len("in the "):]
        if position not in POSITIONS:
            raise ValueError(f"unknown position {position!r} in {prompt!r}")
        return [{**first, "position": position}], None
    for relation in RELATIONS:
        if rest.startswith(relation + " "):
            return [first, obj(4 + len(relation.split()))], relation
    raise ValueError(f"not in the shapes caption grammar: {prompt!r}")


def draw(objs: list[Obj], size: int, rng: np.random.Generator, textured: bool) -> np.ndarray:
    """Render objects on a grey background: (size, size, 3) uint8."""
    level = rng.integers(15, 90)
    grey = np.full((size, size), level, np.float64)
    if textured:  # achromatic stripes: still R = G = B
        yy, xx = np.mgrid[:size, :size]
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 8)
        grey += 18 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    img = np.repeat(np.clip(grey, 0, 110).astype(np.uint8)[..., None], 3, axis=2)
    yy, xx = np.mgrid[:size, :size] + 0.5
    for o in objs:
        cy, cx = GRID[o.row] * size, GRID[o.col] * size
        h = SIZES[o.size] * size / 2
        if o.shape == "circle":
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= h * h
        elif o.shape == "square":
            mask = (np.abs(yy - cy) <= h) & (np.abs(xx - cx) <= h)
        elif o.shape == "cross":  # plus sign: two bars of width 2h/3 across the box
            dy, dx = np.abs(yy - cy), np.abs(xx - cx)
            mask = ((dy <= h) & (dx <= h / 3)) | ((dx <= h) & (dy <= h / 3))
        else:  # upward isosceles triangle in the same box
            t = (yy - (cy - h)) / (2 * h)
            mask = (t >= 0) & (t <= 1) & (np.abs(xx - cx) <= t * h)
        img[mask] = COLOURS[o.colour]
    return img


def _pair_positions(relation: str, rng: np.random.Generator) -> tuple[tuple[int, int], tuple[int, int]]:
    """Grid cells of (first, second) so that "first {relation} second" holds; they never overlap."""
    other = int(rng.integers(0, 3))
    if relation == "left of":
        return (other, 0), (other, 2)
    if relation == "right of":
        return (other, 2), (other, 0)
    if relation == "above":
        return (0, other), (2, other)
    return (2, other), (0, other)


def random_scene(rng: np.random.Generator, allow_pair, shapes: tuple[str, ...] = SHAPES,
                 n_objects: int | None = None) -> tuple[list[Obj], str | None]:
    """One or two objects (distinct colours; ``n_objects`` fixes how many) drawn from ``shapes``, whose
    (colour, shape) pairs all satisfy ``allow_pair``."""
    vocabulary = shapes
    while True:
        n = int(rng.integers(1, 3)) if n_objects is None else n_objects
        colours = rng.choice(list(COLOURS), size=n, replace=False)
        shapes = rng.choice(vocabulary, size=n)
        if not all(allow_pair(c, s) for c, s in zip(colours, shapes)):
            continue
        sizes = rng.choice(list(SIZES), size=n)
        if n == 1:
            r, c = (int(v) for v in rng.integers(0, 3, size=2))
            return [Obj(str(shapes[0]), str(colours[0]), str(sizes[0]), r, c)], None
        relation = str(rng.choice(RELATIONS))
        cells = _pair_positions(relation, rng)
        return [Obj(str(s), str(c), str(z), *cell) for s, c, z, cell in zip(shapes, colours, sizes, cells)], relation


def alt_text(objs: list[Obj], rng: np.random.Generator) -> str:
    """A deliberately poor caption: generic, or naming one attribute of one object."""
    o = objs[int(rng.integers(0, len(objs)))]
    options = ["shapes", "an image", "abstract picture", f"a {o.colour} shape", f"{o.shape}", f"{o.colour}",
               "geometric art", f"{o.shape} icon"]
    return options[int(rng.integers(0, len(options)))]


class ShapesDataset:
    """``n`` generated images of the ``shapes`` grammar, with the dict interface of latentdiff's datasets.

    ``get_batch(index)`` -> ``{"x": (B, 3, S, S) in [-1, 1], "label": (B,) zeros, "caption": [str],
    "alt_text": [str]}``; ``attributes[i]`` = (list of :class:`Obj`, relation or None). Training
    splits never contain a pair of ``HELD_OUT_PAIRS``; the "test" split may.
    """

    num_classes = 0
    channels = 3

    def __init__(self, n: int = 20_000, image_size: int = 32, split: str = "train", seed: int = 0):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.image_size, self.split, self.seed = image_size, split, seed
        self.cache_key = f"shapes-v{VERSION}-seed{seed}-n{n}"
        held_out = set(HELD_OUT_PAIRS)
        allow = (lambda c, s: (c, s) not in held_out) if split == "train" else (lambda c, s: True)
        images, self.attributes, self.captions, self.alt_texts = [], [], [], []
        for i in range(n):
            rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
            objs, relation = random_scene(rng, allow)
            images.append(draw(objs, image_size, rng, textured=bool(rng.integers(0, 2))))
            self.attributes.append((objs, relation))
            self.captions.append(caption_of(objs, relation))
            self.alt_texts.append(alt_text(objs, rng))
        self.images = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (n, 3, S, S) uint8

    def __len__(self) -> int:
        return len(self.captions)

    def get_batch(self, index: torch.Tensor) -> dict:
        index = torch.as_tensor(index, dtype=torch.long)
        return {"x": self.images[index].float().div(127.5).sub(1.0), "label": torch.zeros(len(index), dtype=torch.long),
                "caption": [self.captions[i] for i in index.tolist()],
                "alt_text": [self.alt_texts[i] for i in index.tolist()]}

    def __getitem__(self, i: int) -> dict:
        batch = self.get_batch(torch.tensor([i]))
        return {k: v[0] for k, v in batch.items()}


def concept_scenes(n: int, image_size: int = 32, seed: int = 0, shape: str = "cross", two_objects: float = 0.0):
    """n scenes showing the new shape ``shape`` (one of ``NEW_SHAPES``), drawn and captioned as the
    dataset's: a share ``two_objects`` of them with a second object of an old shape (the new one
    first) -> (images (n, S, S, 3) uint8, exact captions, attributes [(objs, relation)])."""
    if shape not in NEW_SHAPES:
        raise ValueError(f"concept shape must be one of {NEW_SHAPES}, got {shape!r}")
    images, captions, attributes = [], [], []
    for i in range(n):
        rng = np.random.default_rng([seed, 3, i])
        two = rng.uniform() < two_objects
        objs, relation = random_scene(rng, lambda c, s: True, (shape,), n_objects=1 + two)
        if two:  # the second object is one of the old shapes
            objs[1] = dataclasses.replace(objs[1], shape=str(rng.choice(SHAPES)))
        images.append(draw(objs, image_size, rng, textured=bool(rng.integers(0, 2))))
        captions.append(caption_of(objs, relation))
        attributes.append((objs, relation))
    return np.stack(images), captions, attributes


def concept_prompts(n: int, seed: int = 1, shape: str = "cross") -> list[str]:
    """n distinct one-object prompts of the new shape (``concept_scenes``' grammar), in random order."""
    rng = np.random.default_rng([seed, 4])
    cells = [(size, colour, row, col) for size in SIZES for colour in COLOURS for row in range(3) for col in range(3)]
    if n > len(cells):
        raise ValueError(f"only {len(cells)} distinct one-object {shape} prompts exist, asked for {n}")
    pick = rng.permutation(len(cells))[:n]
    return [caption_of([Obj(shape, cells[i][1], cells[i][0], cells[i][2], cells[i][3])]) for i in pick]


def held_out_prompts(seed: int = 0, n: int = 60) -> list[str]:
    """Prompts whose objects include a held-out (colour, shape) pair: half one object, half two."""
    rng = np.random.default_rng([seed, 2])
    held_out = set(HELD_OUT_PAIRS)
    prompts: list[str] = []
    while len(prompts) < n:
        objs, relation = random_scene(rng, lambda c, s: True)
        want_two = len(prompts) >= n // 2
        if (len(objs) == 2) != want_two or not any((o.colour, o.shape) in held_out for o in objs):
            continue
        prompt = caption_of(objs, relation)
        if prompt not in prompts:
            prompts.append(prompt)
    return prompts
