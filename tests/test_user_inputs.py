"""Property-based tests (hypothesis) over what users type (issue 17): ``--set`` keys and values,
sampler / spacing names and step counts, prompts, and image files.

For every input: either a correct result (the override's field holds the value, the image reads with
the right shape, channels and brightness, the sample grid is written), or a failed command that exits
non-zero with one line ``latentdiff COMMAND: ...`` on stderr that names the offending input and is not
an "internal error", and that leaves the files it could touch exactly as they were.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import struct
import tempfile
import typing
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from latentdiff.cli.main import main
from latentdiff.config import Config, apply_overrides
from latentdiff.data.image_folder import ImageFolder, _load_square_image
from latentdiff.io.images import load_image, save_prompt_rows
from latentdiff.pipelines.controlnet import read_control_image
from latentdiff.presets import get_preset
from latentdiff.sampling import SAMPLERS
from latentdiff.schedules import SPACINGS

from clirun import run_cli

# Modest example counts, no deadline (tiny models still take ~0.1 s per call), no example database
# in the repository, the same examples on every run (CI reproducible).
FEW = settings(max_examples=12, deadline=None, database=None, derandomize=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SOME = settings(FEW, max_examples=40)

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)  # unicode + controls
NASTY = st.sampled_from(["", " ", "\x00", "\t\n\r", "\x1b[31m", "é", "日本語", "🎉", "$\\frac{$", "-x", "a=b",
                         "null", "None", "true", "1e400", "NaN", "[1,", "{}", "\u202e", "x" * 10_000])


# ---------------------------------------------------------------- helpers


class Overtime(BaseException):
    """Raised by the alarm: not an Exception, so the CLI's handler cannot turn it into an error line."""


@contextlib.contextmanager
def time_limit(seconds: int, what: str):
    def ring(signum, frame):
        raise Overtime(f"{what} did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def cli(capsys, argv: list[str], seconds: int = 60) -> tuple[int, str, str]:
    """``run_cli`` with a time limit: (exit code, stdout, stderr)."""
    with time_limit(seconds, "latentdiff " + " ".join(a[:40] for a in argv)):
        return run_cli(capsys, argv)


def error_line(code: int, err: str, command: str) -> str:
    """The one error line of a failed command (asserting there is exactly one and it is not internal)."""
    assert code != 0
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith(f"latentdiff {command}:")]
    assert len(errors) == 1, err
    assert err.rstrip("\n").splitlines()[-1] == errors[0], err  # nothing after it
    assert "internal error" not in errors[0], errors[0]
    return errors[0]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size, mtime and content hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        st_ = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(root))] = (digest, st_.st_size if p.is_file() else 0, st_.st_mtime_ns)
    return out


def fresh_dir(parent: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=parent))


def names(message: str, *candidates) -> bool:
    """Whether ``message`` names one of ``candidates`` (as typed, or quoted the way repr() quotes it;
    the empty string only as ``''``)."""
    return any(repr(str(c)) in message or (str(c) and (str(c) in message or repr(str(c))[1:-1] in message))
               for c in candidates)


# ---------------------------------------------------------------- --set keys and values


def _leaves(cls: type[Config], data: dict, prefix: str = "") -> dict[str, typing.Any]:
    """Dotted key -> type hint, for every leaf field of a config (sections that are null count as leaves)."""
    hints, out = typing.get_type_hints(cls), {}
    for key, value in data.items():
        options = typing.get_args(hints[key]) or (hints[key],)
        sub = [c for c in options if isinstance(c, type) and issubclass(c, Config)]
        if isinstance(value, dict):
            out.update(_leaves(sub[0], value, prefix + key + "."))
        else:
            out[prefix + key] = hints[key]
    return out


TINY = get_preset("tiny")
LEAVES = _leaves(type(TINY), TINY.to_dict())
INT_KEYS = sorted(k for k, h in LEAVES.items() if h is int)
FLOAT_KEYS = sorted(k for k, h in LEAVES.items() if h is float)
BOOL_KEYS = sorted(k for k, h in LEAVES.items() if h is bool)
TUPLE_KEYS = sorted(k for k, h in LEAVES.items() if typing.get_origin(h) is tuple and typing.get_args(h)[0] is int)
FREE_TEXT_KEYS = ["description", "data.root", "autoencoder", "train.init_from"]  # strings with no fixed choices


def _get(cfg: Config, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _without(data: dict, key: str) -> dict:
    data = json.loads(json.dumps(data))
    parts, node = key.split("."), data
    for part in parts[:-1]:
        node = node[part]
    node.pop(parts[-1])
    return data


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-10**30, 10**30) | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=2),
    max_leaves=5)
VALUE_TEXT = JSONISH.map(json.dumps) | TEXT | NASTY
KEYS = st.sampled_from(sorted(LEAVES) + ["train", "model", "sample", "text.max_length"]) | TEXT | NASTY


@SOME
@given(key=KEYS, text=VALUE_TEXT)
def test_any_override_gives_its_value_or_an_error_naming_the_key(key, text):
    assume("=" not in key)
    try:
        cfg = apply_overrides(TINY, [f"{key}={text}"])
    except (KeyError, ValueError) as err:
        message = err.args[0]
        assert isinstance(message, str) and "\n" not in message
        assert names(message, key.strip()) or (not key.strip() and "no key" in message), message
        return
    key = key.strip()
    assert key in LEAVES or key in ("train", "model", "sample"), f"{key!r} accepted"
    value = _get(cfg, key)
    assert _without(cfg.to_dict(), key) == _without(TINY.to_dict(), key)  # nothing else changed
    assert type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # still a valid config
    hint = LEAVES.get(key)
    if hint is int:
        assert type(value) is int and value == json.loads(text)
    elif hint is float:
        assert type(value) is float and value == json.loads(text)
    elif hint is bool:
        assert type(value) is bool and value == (text.strip().lower() == "true")
    elif typing.get_origin(hint) is tuple:
        assert type(value) is tuple and list(value) == json.loads(text)
        assert all(type(v) is int for v in value)
    elif str in (typing.get_args(hint) or (hint,)):  # a string field takes the text as typed (or quoted)
        quoted = _json_or_none(text)
        assert value == text or value == quoted or (value is None and text.strip().lower() in ("none", "null"))


def _typed_value(key: str) -> st.SearchStrategy:
    """Values of the right type (and sensible size) for ``key``."""
    hint = LEAVES[key]
    if hint is int:
        return st.integers(1, 10**6)
    if hint is float:
        return st.floats(0.0, 1.0) | st.integers(0, 10)
    if hint is bool:
        return st.booleans()
    if typing.get_origin(hint) is tuple:
        return st.lists(st.integers(1, 8), min_size=1, max_size=4)
    return TEXT.filter(lambda t: t.strip().lower() not in ("none", "null"))


@st.composite
def typed_overrides(draw):
    key = draw(st.sampled_from(INT_KEYS + FLOAT_KEYS + BOOL_KEYS + TUPLE_KEYS + FREE_TEXT_KEYS))
    value = draw(_typed_value(key))
    return key, value, value if isinstance(value, str) else json.dumps(value)


@SOME
@given(override=typed_overrides())
def test_a_value_of_the_fields_type_is_taken_exactly(override):
    key, value, text = override
    try:
        cfg = apply_overrides(TINY, [f"{key}={text}"])
    except ValueError as err:  # of the right type but out of the field's range (e.g. model.dropout=1.0)
        assert key in str(err) and "must" in str(err), err
        return
    got = _get(cfg, key)
    assert (list(got) if isinstance(got, tuple) else got) == value
    hint = LEAVES[key]
    assert type(got) is (tuple if typing.get_origin(hint) is tuple else str if hint not in (int, float, bool) else hint)


@st.composite
def wrong_overrides(draw):
    """An override whose value is of the wrong kind for its field, or whose key does not exist."""
    kind = draw(st.sampled_from(["int", "float", "bool", "tuple", "section", "unknown", "choice", "value"]))
    if kind == "int":
        key = draw(st.sampled_from(INT_KEYS))
        value = draw(st.floats(allow_nan=True).filter(lambda f: not f.is_integer()).map(json.dumps)
                     | st.lists(st.integers(), min_size=1, max_size=3).map(json.dumps)
                     | st.sampled_from(["abc", "true", "1.5", "{}", "[]", "1" * 5000, "Infinity"]))
    elif kind == "float":
        key = draw(st.sampled_from(FLOAT_KEYS))
        value = draw(st.sampled_from(["abc", "NaN", "true", "[1]", "{}", "1" + "0" * 400, "0x10"])
                     | TEXT.filter(lambda t: not _is_json_number(t)))
    elif kind == "bool":
        key = draw(st.sampled_from(BOOL_KEYS))
        value = draw(st.sampled_from(["1", "0", "yes", "[true]", "2.5", "\"true\""]))
    elif kind == "tuple":
        key = draw(st.sampled_from(TUPLE_KEYS))
        value = draw(st.sampled_from(["2", "[1, 2.5]", "\"12\"", "[[1]]", "{\"a\": 1}", "[true]"]))
    elif kind == "section":
        key = draw(st.sampled_from(["train", "model", "sample", "data"]))
        value = draw(st.sampled_from(["1", "[]", "abc", "{\"nope\": 1}", "{\"lr\": \"abc\"}", "{\"channels\": 1.5}"]))
    elif kind == "choice":
        key = draw(st.sampled_from(["sample.sampler", "sample.spacing", "sample.threshold"]))
        valid = (*SAMPLERS, *SPACINGS, "fitted", "none", "static", "dynamic")
        value = draw(TEXT.filter(lambda t: t.strip() not in valid))
    elif kind == "value":  # the right type, but no network or dataset can have it
        key, value = draw(st.sampled_from([("data.name", "nope"), ("data.image_size", "0"), ("data.channels", "2"),
                                           ("model.channels", "0"), ("model.channel_mult", "[]"),
                                           ("model.channel_mult", "[1, 0]"), ("model.dropout", "1.5"),
                                           ("diffusion.schedule", "nope"), ("diffusion.parameterisation", "eps2"),
                                           ("train.batch_size", "0"), ("train.lr", "-1"), ("sample.steps", "0")]))
    else:
        key = draw(st.sampled_from(["train.nope", "nope", "model.channels.x", "text.max_length", "sample.", ".lr"])
                   | TEXT.filter(lambda t: "=" not in t and t.strip() not in LEAVES and t.strip()))
        value = draw(VALUE_TEXT)
    return key, value


def _json_or_none(text: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _is_json_number(text: str) -> bool:
    try:
        return isinstance(json.loads(text), (int, float)) and not isinstance(json.loads(text), bool)
    except (ValueError, RecursionError):
        return False


@SOME
@given(override=wrong_overrides())
def test_a_wrong_value_or_key_is_refused_naming_it(override):
    key, value = override
    with pytest.raises((KeyError, ValueError)) as caught:
        apply_overrides(TINY, [f"{key}={value}"])
    assert names(caught.value.args[0], key.strip()), caught.value.args[0]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("inputs")


@SOME
@given(override=wrong_overrides(), resume=st.booleans())
def test_train_with_a_bad_override_says_so_in_one_line_and_writes_nothing(override, resume, capsys, scratch, tiny_ckpt):
    """A fresh run folder is not created; an existing run (resumed by the same command) is left as it was."""
    key, value = override
    work = tiny_ckpt.parent if resume else fresh_dir(scratch)
    out = work if resume else work / "run"
    before = snapshot(work)
    code, _, err = cli(capsys, ["train", "--preset", "tiny", "--out", str(out), "--set", f"{key}={value}"])
    line = error_line(code, err, "train")
    assert names(line, key.strip()), line
    assert snapshot(work) == before


# ---------------------------------------------------------------- sampler, spacing, steps


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    main(["train", "--preset", "tiny", "--out", str(out), "--set", "train.max_steps=2",
          "--set", "train.sample_every=100"])
    return out / "checkpoint"


# the 'fitted' spacing fits a grid on a pilot batch first (minutes): it is tested in test_end_to_end.py
SAMPLER_NAMES = st.sampled_from(sorted(SAMPLERS)) | TEXT | NASTY
SPACING_NAMES = (st.sampled_from(SPACINGS) | TEXT | NASTY).filter(lambda s: s != "fitted")
STEP_COUNTS = st.integers(-3, 8) | st.sampled_from([10**6, 10**9, 2**63, 10**30, -(10**20)])


@SOME
@given(sampler=SAMPLER_NAMES, spacing=SPACING_NAMES, steps=STEP_COUNTS)
@example(sampler="ddim", spacing="karras", steps=0)          # not the run's default steps
@example(sampler="ddim", spacing="karras", steps=-1)
@example(sampler="euler", spacing="logsnr", steps=10**6)     # refused at once, not hours of sampling
@example(sampler="dpmpp_2m", spacing="balanced", steps=2**63)
@example(sampler="", spacing="karras", steps=3)              # not the run's default sampler
@example(sampler="ddim", spacing="", steps=3)
@example(sampler="dpmpp_3m", spacing="leading", steps=3)     # valid: must sample
def test_sample_with_any_sampler_spacing_and_steps(sampler, spacing, steps, capsys, tiny_ckpt, scratch):
    work = fresh_dir(scratch)
    out = work / "grids" / "out.png"
    before, ckpt_before = snapshot(work), snapshot(tiny_ckpt)
    code, stdout, err = cli(capsys, ["sample", str(tiny_ckpt), "--n", "1", f"--sampler={sampler}",
                                     f"--spacing={spacing}", "--steps", str(steps), "--out", str(out)], seconds=20)
    assert snapshot(tiny_ckpt) == ckpt_before
    limit = 1000 if spacing in ("leading", "trailing", "linspace") else 10_000  # T, or schedules.MAX_CONTINUOUS_STEPS
    bad = {"sampler": sampler not in SAMPLERS, "spacing": spacing not in SPACINGS, "steps": not 1 <= steps <= limit}
    if code == 0:
        assert not any(bad.values()), f"accepted {bad}"
        with Image.open(out) as picture:
            assert picture.size[0] > 0 and picture.size[1] > 0
        assert f"wrote {out}" in stdout
        return
    line = error_line(code, err, "sample")
    assert snapshot(work) == before
    if bad["sampler"]:
        assert names(line, sampler) and "valid" in line, line
    elif bad["spacing"]:
        assert names(line, spacing) and "valid" in line, line
    elif bad["steps"]:
        assert "step" in line and str(steps) in line, line
    else:  # a valid combination may only be refused for too few steps (a sampler's order)
        assert "step" in line and str(steps) in line and steps < 4, line


# ---------------------------------------------------------------- prompts


@pytest.fixture(scope="module")
def t2i_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("t2i")
    main(["train", "--preset", "tiny-t2i", "--out", str(out), "--set", "train.max_steps=2",
          "--set", "train.sample_every=100"])
    assert json.loads((out / "checkpoint" / "config.json").read_text())["train"]["max_steps"] == 2
    return out / "checkpoint"


PROMPTS = TEXT | NASTY | st.text(max_size=3).map(lambda t: t * 3000)


@FEW
@given(prompt=PROMPTS)
def test_any_prompt_samples_a_captioned_grid(prompt, capsys, t2i_ckpt, scratch):
    work = fresh_dir(scratch)
    ref, out = work / "ref.png", work / "out.png"
    code, _, err = cli(capsys, ["sample", str(t2i_ckpt), "--prompt=a", "--n", "1", "--steps", "1",
                                "--sampler", "ddim", "--out", str(ref)])
    assert code == 0, err
    code, stdout, err = cli(capsys, ["sample", str(t2i_ckpt), f"--prompt={prompt}", "--n", "1", "--steps", "1",
                                     "--sampler", "ddim", "--out", str(out)])
    assert code == 0, err
    assert "latentdiff sample:" not in err
    with Image.open(out) as picture, Image.open(ref) as reference:
        picture.load()
        assert picture.width == reference.width
        # the caption (none for "") is at most four lines, whatever the prompt's length: "a" takes one
        assert picture.height <= reference.height + 3 * 16


@settings(FEW, max_examples=5)
@given(prompts=st.lists(PROMPTS, min_size=1, max_size=2))
def test_prompt_rows_take_any_prompt_text(prompts, scratch):
    """``eval adherence --png`` titles rows with the user's prompts: "$" is text, not mathtext."""
    path = fresh_dir(scratch) / "rows.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing glyphs for emoji / CJK in the default font
        save_prompt_rows(torch.zeros(len(prompts), 3, 8, 8), prompts, path)
    with Image.open(path) as picture:
        assert picture.size[0] > 0


def test_the_text_encoder_takes_any_prompt(t2i_ckpt):
    from latentdiff.pipelines import text_encoder_for
    from latentdiff.presets import RunConfig

    cfg = RunConfig.from_dict(json.loads((t2i_ckpt / "config.json").read_text()))
    encoder = text_encoder_for(cfg)
    prompts = ["", "   ", "\x00\x07", "日本語 🎉", "$\\frac{$", "x" * 10_000, "a " * 5000, "\u202e\u200b"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "a prompt is longer than N tokens; it is truncated"
        tokens, pooled, mask = encoder.encode(prompts)
    assert tokens.shape[:2] == mask.shape and pooled.shape == (len(prompts), tokens.shape[-1])
    assert torch.isfinite(tokens).all() and torch.isfinite(pooled).all()
    assert mask.any(1).tolist() == [bool(p.strip()) for p in prompts]  # blank prompts are the null condition


# ---------------------------------------------------------------- image files

KINDS = ["L", "LA", "RGB", "RGBA", "P", "P-transparent", "1", "CMYK", "I;16", "I", "F"]
GREY_KINDS = {"L", "LA", "1", "I;16", "I", "F"}


def _luma(rgb) -> float:
    r, g, b = rgb
    return (r * 299 + g * 587 + b * 114) / 1000  # ITU-R 601-2, as Pillow converts RGB to L


@st.composite
def images(draw):
    """(kind, PIL image, expected RGB in [0, 1]): a constant image of a random colour in any mode."""
    kind = draw(st.sampled_from(KINDS))
    w, h = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    byte = st.integers(0, 255)
    if kind in ("I;16", "I"):
        v = draw(st.integers(0, 65535))
        array = np.full((h, w), v, np.uint16 if kind == "I;16" else np.int32)
        return kind, Image.fromarray(array), (v / 65535,) * 3
    if kind == "F":
        v = draw(st.floats(0, 1, width=32))
        return kind, Image.fromarray(np.full((h, w), v, np.float32)), (float(v),) * 3
    if kind == "1":
        v = draw(st.booleans())
        return kind, Image.new("1", (w, h), int(v)), (float(v),) * 3
    if kind in ("L", "LA"):
        g = draw(byte)
        return kind, Image.new(kind, (w, h), (g, draw(byte)) if kind == "LA" else g), (g / 255,) * 3
    if kind == "CMYK":
        c, m, y, k = (draw(byte) for _ in range(4))
        rgb = tuple((255 - v) * (255 - k) / 255 / 255 for v in (c, m, y))
        return kind, Image.new("CMYK", (w, h), (c, m, y, k)), rgb
    rgb = tuple(draw(byte) for _ in range(3))
    if kind == "RGBA":
        return kind, Image.new("RGBA", (w, h), (*rgb, draw(byte))), tuple(v / 255 for v in rgb)
    picture = Image.new("RGB", (w, h), rgb)
    if kind.startswith("P"):
        picture = picture.quantize(colors=2)
        if kind == "P-transparent":
            picture.info["transparency"] = 1  # an unused index: the colour stays opaque
    return kind, picture, tuple(v / 255 for v in rgb)


def _save(picture: Image.Image, kind: str, folder: Path) -> Path:
    # PNG holds L, LA, RGB, RGBA, P, 1 and 16-bit grey; CMYK, 32-bit int and float grey go to TIFF
    suffix = ".tiff" if kind in ("CMYK", "I", "F") else ".png"
    path = folder / f"image{suffix}"
    if kind == "P-transparent":
        picture.save(path, transparency=picture.info["transparency"])
    else:
        picture.save(path)
    return path


TOL = 2.5 / 255


@SOME
@given(image=images(), size=st.integers(1, 12), channels=st.sampled_from([1, 3]))
def test_every_image_mode_reads_with_the_right_channels_and_brightness(image, size, channels, scratch):
    kind, picture, rgb = image
    path = _save(picture, kind, fresh_dir(scratch))
    expected = torch.tensor([_luma(rgb)] if channels == 1 else rgb)
    x = load_image(path, size=size, channels=channels)
    assert x.shape == (1, channels, size, size) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close((x[0] + 1) / 2, expected[:, None, None].expand(channels, size, size),
                               atol=TOL, rtol=0)
    square = _load_square_image(path, size, "L" if channels == 1 else "RGB")
    assert square.shape == (size, size, channels) and square.dtype == np.uint8
    np.testing.assert_allclose(square / 255, np.broadcast_to(expected.numpy(), square.shape), atol=TOL)
    control = read_control_image(path)  # the file's own channels: grey or colour, alpha where it has one
    own = (1 if kind in GREY_KINDS else 3) + (kind in ("LA", "RGBA", "P-transparent"))
    assert control.shape == (1, own, picture.height, picture.width)
    colour = torch.tensor([_luma(rgb)] if kind in GREY_KINDS else rgb)
    torch.testing.assert_close(control[0, :len(colour)], colour[:, None, None].expand(len(colour), *control.shape[2:]),
                               atol=TOL, rtol=0)


def _gradient16(path: Path) -> Path:
    Image.fromarray(np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)).save(path)
    return path


def test_a_16_bit_gradient_reads_at_its_own_brightness(tmp_path):
    path = _gradient16(tmp_path / "g16.png")
    assert Image.open(path).mode == "I;16"
    assert (load_image(path, channels=1).mean().item() + 1) / 2 == pytest.approx(0.5, abs=0.01)
    assert (load_image(path, size=16, channels=3).mean().item() + 1) / 2 == pytest.approx(0.5, abs=0.01)
    assert _load_square_image(path, 32, "L").mean() / 255 == pytest.approx(0.5, abs=0.02)
    assert read_control_image(path).mean().item() == pytest.approx(0.5, abs=0.01)


def _png(width: int, height: int, pixels: bytes = b"\0\0") -> bytes:
    """A PNG whose header says width x height (grey, 8 bit), with whatever pixel data is given."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b"")


@st.composite
def bad_files(draw, folder: Path):
    """A path that is not a readable image: truncated, garbage, empty, text, a bomb, a folder, missing."""
    kind = draw(st.sampled_from(["truncated", "garbage", "empty", "text", "bomb", "corrupt", "folder", "missing"]))
    path = folder / draw(st.sampled_from(["control.png", "edges.jpg", "ümlaut ☃.png", "image"]))
    if kind == "truncated":
        _, picture, _ = draw(images().filter(lambda i: i[0] not in ("CMYK", "I", "F")))
        tmp = folder / "whole.png"
        picture.save(tmp, format="PNG")
        data = tmp.read_bytes()
        tmp.unlink()
        path.write_bytes(data[:draw(st.integers(0, len(data) - 13))])  # cut before the IEND chunk's end
    elif kind == "garbage":
        path.write_bytes(draw(st.binary(min_size=1, max_size=200)))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text(draw(TEXT), encoding="utf-8")
    elif kind == "bomb":
        path.write_bytes(_png(100_000, 100_000))  # 1e10 pixels declared: over 2x Image.MAX_IMAGE_PIXELS
    elif kind == "corrupt":
        data = bytearray(_png(4, 4, bytes(4 * 5)))
        data[draw(st.integers(8, len(data) - 1))] ^= draw(st.integers(1, 255))
        path.write_bytes(bytes(data))
    elif kind == "folder":
        path.mkdir()
    return kind, path


@SOME
@given(data=st.data())
def test_a_file_that_is_not_a_readable_image_is_an_error_naming_it(data, scratch):
    kind, path = data.draw(bad_files(fresh_dir(scratch)))
    for read in (lambda: load_image(path, size=8), lambda: _load_square_image(path, 8, "RGB"),
                 lambda: read_control_image(path)):
        try:
            x = read()
        except (ValueError, OSError) as err:
            assert str(path) in str(err), f"{kind}: {err}"
            continue
        assert kind in ("truncated", "corrupt"), f"{kind} read as an image"  # a cut that kept every pixel
        assert isinstance(x, (np.ndarray, torch.Tensor))


def test_the_decompression_bomb_limit_is_a_clear_error_and_the_warning_zone_reads(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.new("L", (5, 5), 128).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 25 pixels > 2 x 10: Pillow refuses
    for read in (lambda: load_image(path), lambda: _load_square_image(path, 4, "L"), lambda: read_control_image(path)):
        with pytest.raises(ValueError, match=f"{path}.*decompression bomb"):
            read()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)  # 25 pixels in (1x, 2x]: Pillow warns and reads
    with pytest.warns(Image.DecompressionBombWarning):
        assert load_image(path, channels=1).shape == (1, 1, 5, 5)


def test_an_image_folder_keeps_what_reads_and_names_what_it_skips(tmp_path):
    _gradient16(tmp_path / "g16.png")
    Image.new("RGBA", (10, 6), (255, 0, 0, 0)).save(tmp_path / "rgba.png")
    Image.new("P", (3, 3)).save(tmp_path / "palette.gif")
    Image.new("CMYK", (1, 1), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "bomb.png").write_bytes(_png(100_000, 100_000))
    (tmp_path / "cut.png").write_bytes((tmp_path / "g16.png").read_bytes()[:100])
    with pytest.warns(UserWarning, match="skipped 3 unreadable") as caught:
        folder = ImageFolder(str(tmp_path), image_size=8, channels=3)
    assert all(name in str(caught[0].message) for name in ("bomb.png", "cut.png", "text.png"))
    assert [p.name for p in folder.paths] == ["cmyk.tif", "g16.png", "palette.gif", "rgba.png"]
    x = folder.get_batch(torch.arange(4))["x"]
    assert x.shape == (4, 3, 8, 8)
    assert (x[1].mean().item() + 1) / 2 == pytest.approx(0.5, abs=0.03)  # not 1.0 (clipped at 255)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([1.0, -1.0, -1.0]))  # CMYK cyan-free red
    torch.testing.assert_close(x[3, :, 0, 0], torch.tensor([1.0, -1.0, -1.0]))  # RGBA: its colour, alpha dropped


@pytest.fixture(scope="module")
def controlnet_ckpt(t2i_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("cn")
    main(["train", "--preset", "tiny-controlnet", "--out", str(out), "--set", f"base={t2i_ckpt}",
          "--set", "train.max_steps=2", "--set", "train.sample_every=100"])
    return out / "checkpoint"


def test_a_16_bit_control_image_samples_as_its_8_bit_twin_and_a_bomb_is_refused(capsys, controlnet_ckpt, tmp_path):
    g16 = _gradient16(tmp_path / "g16.png")
    g8 = tmp_path / "g8.png"
    Image.fromarray((np.asarray(Image.open(g16)) / 257).round().astype(np.uint8)).save(g8)
    grids = []
    for control in (g16, g8):
        out = tmp_path / f"from_{control.stem}.png"
        code, _, err = cli(capsys, ["sample", str(controlnet_ckpt), "--control", str(control), "--guess-mode",
                                    "--n", "1", "--steps", "2", "--sampler", "ddim", "--out", str(out)])
        assert code == 0, err
        grids.append(np.asarray(Image.open(out)))
    np.testing.assert_array_equal(grids[0], grids[1])  # the control panel and the sample: the same picture
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png(100_000, 100_000))
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, ["sample", str(controlnet_ckpt), "--control", str(bomb), "--guess-mode", "--n", "1",
                                "--steps", "1", "--out", str(tmp_path / "new" / "x.png")])
    line = error_line(code, err, "sample")
    assert str(bomb) in line and "decompression bomb" in line, line
    assert snapshot(tmp_path) == before


@settings(FEW, max_examples=20)
@given(data=st.data())
def test_sample_with_any_control_file(data, capsys, controlnet_ckpt, scratch):
    work = fresh_dir(scratch)
    if data.draw(st.booleans()):
        kind, picture, _ = data.draw(images())
        path = _save(picture, kind, work)
    else:
        kind, path = data.draw(bad_files(work))
    out = work / "samples" / "out.png"
    before = snapshot(work)
    code, stdout, err = cli(capsys, ["sample", str(controlnet_ckpt), "--control", str(path), "--guess-mode",
                                     "--n", "1", "--steps", "1", "--sampler", "ddim", "--out", str(out)])
    if code == 0:
        assert kind in KINDS or kind in ("truncated", "corrupt"), f"{kind} accepted"
        with Image.open(out) as picture:
            assert picture.size[0] > 0
        assert {k: v for k, v in snapshot(work).items() if not k.startswith("samples")} == before
        return
    assert kind not in KINDS, err
    line = error_line(code, err, "sample")
    assert names(line, path), line
    assert snapshot(work) == before
