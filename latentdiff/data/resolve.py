"""Settings that follow an image folder: ``latentdiff train --data DIR``.

:func:`resolve_data` is the one place where a run's model follows its data. It reads the folder's
layout and image headers (``inspect_folder``) and fills in what the data decides:

* class subfolders -> labels: ``model.num_classes`` and ``data.class_names`` (saved with the
  checkpoint, so ``sample --class-label NAME`` works); a loose image at the top level beside class
  folders is skipped with a note (it would otherwise make the whole set unlabelled);
* ``<stem>.txt`` sidecars or ``metadata.jsonl`` -> captions (used by text-to-image presets);
* neither -> unconditional (``model.num_classes = 0``);
* grey or colour -> ``data.channels`` and, in pixel space, ``model.in_channels``;
* ``data.image_size`` (the preset's unless set) -> ``model.image_size``: images of another size are
  centre-cropped and resized to it, with a note.

A value given explicitly (``--set model.num_classes=10``) is kept; one that contradicts the data or
its partner field is a ValueError naming both values. Resolution depends only on the config, the
keys set and the folder's contents, so the same command gives the same config (the resume rule).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Collection

from .fashion_mnist import CLASS_NAMES
from .image_folder import _scan, class_layout, read_captions

_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


@dataclasses.dataclass(frozen=True)
class FolderFacts:
    """What an image folder holds (its training split): images, classes, captions, modes, sizes."""

    root: Path
    split: bool                     # root/train and root/test exist (``root`` is then root/train)
    n: int                          # readable images used (loose top-level files beside classes excluded)
    class_names: tuple[str, ...]
    counts: tuple[int, ...]         # images per class
    loose: tuple[str, ...]          # top-level images skipped beside class folders
    caption_source: str             # "<stem>.txt", "metadata.jsonl", both, or ""
    n_captioned: int
    channels: int                   # 3 when any image is colour, else 1
    modes: tuple[str, ...]          # distinct Pillow modes
    sizes: tuple[tuple[int, int], ...]  # distinct (width, height)


def _is_grey(image) -> bool:
    if image.mode in _GREY_MODES:
        return True
    if image.mode in ("P", "PA"):
        palette = image.getpalette() or []
        return bool(palette) and all(palette[i] == palette[i + 1] == palette[i + 2]
                                     for i in range(0, len(palette) - 2, 3))
    return False


def inspect_folder(root: str | Path) -> FolderFacts:
    """Scan an image folder (``root/train`` when it has train/ and test/) reading headers only.
    Raises FileNotFoundError / ValueError naming the folder when it has no readable image."""
    from PIL import Image

    from . import has_splits, split_root

    top = Path(root).expanduser()
    if not top.is_dir():
        raise FileNotFoundError(f"--data / data.root: image folder {top} does not exist")
    folder = split_root(top, "train")
    paths = _scan(folder)
    names, paths, loose = class_layout(folder, paths)
    readable, modes, sizes, grey = [], set(), set(), True
    for path in paths:
        try:
            with Image.open(path) as image:
                modes.add(image.mode)
                sizes.add(image.size)
                grey = grey and _is_grey(image)
        except Exception:  # noqa: BLE001 - ImageFolder names unreadable files when it loads them
            continue
        readable.append(path)
    if not readable:
        raise ValueError(f"--data / data.root: no readable images (.png, .jpg, ...) under {folder}")
    captions, source = read_captions(folder, readable)
    counts = tuple(sum(p.relative_to(folder).parts[0] == name for p in readable) for name in names)
    return FolderFacts(root=folder, split=has_splits(top), n=len(readable), class_names=tuple(names),
                       counts=counts, loose=tuple(p.name for p in loose), caption_source=source,
                       n_captioned=sum(bool(c) for c in captions or []), channels=1 if grey else 3,
                       modes=tuple(sorted(modes)), sizes=tuple(sorted(sizes)))


def _sizes_text(sizes: tuple[tuple[int, int], ...]) -> str:
    if len(sizes) == 1:
        return "{}x{}".format(*sizes[0])
    by_area = sorted(sizes, key=lambda s: s[0] * s[1])
    return "mixed sizes {}x{} to {}x{}".format(*by_area[0], *by_area[-1])


def _pick(name_a: str, a, given_a: bool, name_b: str, b, given_b: bool, default):
    """The value two coupled fields share: an explicit one, else ``default``; both explicit and
    different is an error naming both."""
    if given_a and given_b and a != b:
        raise ValueError(f"{name_a}={a} but {name_b}={b}: they must agree (set one of them, or neither "
                         f"to take it from the data)")
    return a if given_a else b if given_b else default


def resolve_data(cfg, explicit: Collection[str] | None = None):
    """``cfg`` (a RunConfig or AutoencoderRunConfig) with its model following its data -> (cfg, lines).

    Args:
        cfg: the run's config; only ``data.name == "folder"`` is inspected. For other datasets an
            explicitly set ``data.image_size`` / ``data.channels`` carries over to a pixel-space model.
        explicit: the dotted keys the user set (``--set``; a section name covers its keys). None:
            every value in ``cfg`` counts as explicit, so the call only checks (and fills in
            ``data.class_names``), which is what ``train_run`` does with a config from Python.

    Returns:
        (resolved cfg, lines to show: the layout in one line, then notes).

    Raises:
        ValueError: a value contradicting the data or its partner field, naming both values.
    """
    def given(key: str) -> bool:
        return explicit is None or any(key == k or key.startswith(k + ".") for k in explicit)

    data = cfg.data
    diffusion = hasattr(cfg, "model")
    pixel = diffusion and cfg.autoencoder is None
    net = cfg.model if diffusion else cfg.autoencoder
    net_channels_key = "model.in_channels" if diffusion else "autoencoder.in_channels"
    couple = pixel or not diffusion  # a latent model's channels and size are its autoencoder's latents
    if data.name != "folder":
        if explicit is None:
            return cfg, []
        changes = {}
        if couple and given("data.channels"):
            changes["in_channels"] = _pick("data.channels", data.channels, True, net_channels_key,
                                           net.in_channels, given(net_channels_key), None)
        if pixel and given("data.image_size"):
            changes["image_size"] = _pick("data.image_size", data.image_size, True, "model.image_size",
                                          net.image_size, given("model.image_size"), None)
        return (_replace_net(cfg, net.replace(**changes)) if changes else cfg), []

    if data.root is None:
        raise ValueError("data.name=folder needs data.root = a folder of images (latentdiff train --data DIR)")
    facts = inspect_folder(data.root)
    notes = []
    # channels: explicit data.channels, else the net's explicit in_channels, else the data's
    channels = _pick("data.channels", data.channels, given("data.channels"), net_channels_key, net.in_channels,
                     couple and given(net_channels_key), facts.channels)
    kind = {1: "grey", 3: "colour"}
    if channels != facts.channels:
        asked = "data.channels" if given("data.channels") else net_channels_key
        notes.append(f"the images are {kind[facts.channels]}; they are converted to {kind[channels]} "
                     f"({channels} channel{'s' * (channels > 1)}) as {asked}={channels} asks")
    changes = {"in_channels": channels} if couple else {}

    size = data.image_size
    if pixel:
        size = _pick("data.image_size", data.image_size, given("data.image_size"), "model.image_size",
                     net.image_size, given("model.image_size"), data.image_size)
        factor = net.patch_size * 2 ** (len(net.channel_mult) - 1)
        if size % factor:
            raise ValueError(f"data.image_size={size}: this model (model.channel_mult {list(net.channel_mult)}, "
                             f"patch_size {net.patch_size}) needs a multiple of {factor}")
        changes["image_size"] = size
    if facts.sizes != ((size, size),):
        why = ("data.image_size" if given("data.image_size") or given("model.image_size")
               else "the preset's size; --set data.image_size=S to train at S")
        notes.append(f"the images are {_sizes_text(facts.sizes)}: centre-cropped to squares and resized to "
                     f"{size}x{size} ({why})")

    names = facts.class_names
    if diffusion:
        k = len(names)
        folders = f"{k} class folders ({', '.join(names)})" if k else "no class folders (unlabelled)"
        n_classes = net.num_classes if given("model.num_classes") else k
        if n_classes == 0 and k:
            notes.append(f"model.num_classes=0: the {k} class folders' labels are not used (an unconditional model)")
            names = ()
        elif n_classes != k:
            fix = ("set model.num_classes=0 or put the images in one subfolder per class" if not k
                   else f"set model.num_classes={k} or leave it out")
            raise ValueError(f"model.num_classes={n_classes} but {facts.root} has {folders}: {fix}")
        changes["num_classes"] = n_classes
    if data.class_names and tuple(data.class_names) != tuple(names):
        raise ValueError(f"data.class_names={list(data.class_names)} but {facts.root} has class folders "
                         f"{list(names)}")
    text = getattr(cfg, "text", None)
    if text is not None and not facts.caption_source:
        raise ValueError(f"this preset is text-to-image but {facts.root} has no captions: put a <stem>.txt beside "
                         f"each image or a metadata.jsonl ({{\"file_name\": ..., \"text\": ...}} per line) in it")
    if facts.loose:
        shown = ", ".join(facts.loose[:3]) + (", ..." if len(facts.loose) > 3 else "")
        notes.append(f"skipped {len(facts.loose)} loose image(s) at the top level of {facts.root}, outside the "
                     f"class folders: {shown} (move them into a class folder to use them)")

    cfg = cfg.replace(data=data.replace(channels=channels, image_size=size, class_names=tuple(names)))
    line = _layout_line(facts, names, text is not None, channels, size)
    return _replace_net(cfg, net.replace(**changes)), [line] + [f"note: {n}" for n in notes]


def _layout_line(facts: FolderFacts, names: tuple[str, ...], text: bool, channels: int, size: int) -> str:
    """The one line that says what was found and what the run makes of it."""
    layout = []
    if names:
        layout.append(f"class subfolders -> labels, {len(names)} classes ("
                      + ", ".join(f"{n}: {c}" for n, c in zip(names, facts.counts)) + ")")
    elif facts.class_names:
        layout.append(f"{len(facts.class_names)} class subfolders, labels unused")
    if facts.caption_source:
        used = "text conditioning" if text else "unused: this preset has no text encoder"
        layout.append(f"captions from {facts.caption_source} for {facts.n_captioned}/{facts.n} images ({used})")
    if not names and not (text and facts.caption_source):
        layout.append("unconditional")
    kind = "grey" if facts.channels == 1 else "colour"
    return (f"data {facts.root}{' (the train/ split)' if facts.split else ''}: {facts.n} images; "
            f"{'; '.join(layout)}; {kind} ({', '.join(facts.modes)}) -> {channels} channel"
            f"{'s' * (channels > 1)}; {_sizes_text(facts.sizes)} -> {size}x{size}")


def _replace_net(cfg, net):
    return cfg.replace(model=net) if hasattr(cfg, "model") else cfg.replace(autoencoder=net)


def model_class_names(cfg) -> list[str]:
    """A diffusion checkpoint's class names in label order ([] when unknown): ``data.class_names``,
    or Fashion-MNIST's for an fmnist model."""
    names = list(cfg.data.class_names)
    if not names and cfg.data.name == "fmnist" and cfg.model.num_classes == len(CLASS_NAMES):
        names = list(CLASS_NAMES)
    return names if len(names) == cfg.model.num_classes else []


def class_index(cfg, value: str | int) -> int:
    """``--class-label`` as a label index: a class name (exact, else case-insensitive) or an index.
    Raises ValueError listing the classes for anything else."""
    n = cfg.model.num_classes
    if n == 0:
        raise ValueError(f"--class-label {value}: this model is not class-conditional (model.num_classes=0)")
    names = model_class_names(cfg)
    listing = ", ".join(f"{i} {name}" for i, name in enumerate(names)) if names else f"indices 0 to {n - 1}"
    text = str(value).strip()
    lowered = [name.lower() for name in names]
    if text in names:
        return names.index(text)
    if text.lower() in lowered and lowered.count(text.lower()) == 1:
        return lowered.index(text.lower())
    try:
        index = int(text)
    except ValueError:
        raise ValueError(f"--class-label {text!r}: not a class of this model; classes: {listing}") from None
    if not 0 <= index < n:
        raise ValueError(f"--class-label {index}: out of range; classes: {listing}")
    return index


def data_overrides(data_dir: str | None, overrides: list[str] | None) -> list[str]:
    """``--data DIR`` as the ``--set`` items it stands for (``data.name=folder``, ``data.root=DIR``),
    before the user's own; refuses ``--data`` together with ``--set data.root`` / ``data.name``."""
    overrides = list(overrides or [])
    if data_dir is None:
        return overrides
    clash = [item for item in overrides if item.split("=", 1)[0].strip() in ("data", "data.root", "data.name")]
    if clash:
        raise ValueError(f"--data {data_dir} and --set {clash[0]} both say which data to use: give one of them")
    return ["data.name=folder", f"data.root={data_dir}", *overrides]
