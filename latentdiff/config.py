"""Frozen dataclass configs with dict round trips and ``--set a.b=c`` overrides.

Every component has one frozen dataclass config. Configs nest (a field whose
type is another config), serialise to plain JSON-able dicts and come back
with :meth:`Config.from_dict`, which rejects unknown keys by name and values
of the wrong type (``train.lr="abc"``, ``train.max_steps=1.5``) naming the key
and the type the field holds. An unknown ``--set`` key is refused with the nearest valid key
suggested. :func:`describe_keys` lists every dotted key with its value and a one-line
description, read from the field's trailing ``# comment`` (or its docstring entry,
``field(metadata={"help": ...})``, or :func:`document`): what ``latentdiff config PRESET`` prints.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import io
import json
import math
import re
import tokenize
import types
import typing
from typing import Any, Sequence, TypeVar

C = TypeVar("C", bound="Config")


@dataclasses.dataclass(frozen=True)
class Config:
    """Base class: subclasses are ``@dataclasses.dataclass(frozen=True)``."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Config) else _plain(value)
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], _prefix: str = "") -> C:
        """The config from a plain dict (as :meth:`to_dict` writes it). Missing keys take their
        defaults; unknown keys raise ``KeyError``, a value of the wrong type ``ValueError``, both
        naming the dotted key."""
        if not isinstance(data, dict):
            raise ValueError(f"{_prefix.rstrip('.') or cls.__name__}: expected a {cls.__name__} section "
                             f"(a JSON object), got {_show(data)}")
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        names = {f.name for f in fields}
        unknown = set(data) - names
        if unknown:
            where = f"{_prefix.rstrip('.')} ({cls.__name__})" if _prefix else cls.__name__
            raise KeyError(f"{where}: unknown keys {sorted(unknown)}; valid: {sorted(names)}")
        missing = [f.name for f in fields if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"{_prefix.rstrip('.') or cls.__name__}: missing required keys {missing}")
        kwargs = {key: _coerce(hints[key], value, _prefix + key) for key, value in data.items()}
        return cls(**kwargs)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _config_type(hint: Any) -> type[Config] | None:
    """The Config subclass named by a type hint (also inside ``X | None``)."""
    candidates = typing.get_args(hint) or (hint,)
    for c in candidates:
        if isinstance(c, type) and issubclass(c, Config):
            return c
    return None


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _type_name(hint: Any) -> str:
    """How an error message names what a field holds."""
    if _is_union(hint):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if isinstance(hint, type) and issubclass(hint, Config):
        return f"a {hint.__name__} section (a JSON object)"
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        return f"a list of {_type_name(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _show(value: Any, limit: int = 60) -> str:
    """A value as an error message quotes it: short, on one line."""
    text = repr(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} characters)"
    return text


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """``value`` as the type ``hint`` names (a JSON list becomes a tuple, 1000.0 an int 1000); a value
    of another kind raises ValueError naming ``key``. Hints other than bool, int, float, str,
    tuple[...], Config subclasses and their ``| None`` pass values through unchecked."""
    wrong = ValueError(f"{key}: expected {_type_name(hint)}, got {_show(value)}")
    if _is_union(hint):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except ValueError:
                if isinstance(value, dict) and _config_type(option) is not None:
                    raise  # the error inside the section names its own key
        raise wrong
    if isinstance(hint, type) and issubclass(hint, Config):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return hint.from_dict(value, _prefix=key + ".")
        raise wrong
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise wrong
    if hint is int:
        if isinstance(value, bool):
            raise wrong
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise wrong
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:  # an int beyond 1e308
                raise wrong from None
            if not math.isnan(value):
                return value
        raise wrong
    if hint is str:
        if isinstance(value, str):
            return value
        raise wrong
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise wrong
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ValueError(f"{key}: expected a list of {len(args)} values, got {_show(value)}")
        if not args:
            return tuple(value)
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    return value


def parse_value(text: str) -> Any:
    """Parse an override value: JSON where it parses (numbers, bools, lists, objects, null), else the text.

    ``true``/``false``/``none``/``null`` are read in any case; text that is not JSON (``abc``, a
    5,000-digit number, nesting too deep) stays a string.
    """
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError, int digit limit, too deep
        lowered = text.strip().lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered in ("none", "null"):
            return None
        return text


def _parse_for(hint: Any, text: str) -> Any:
    """Parse override text for a field of type ``hint``: a string field keeps the text as typed
    (``data.root=001`` is "001", not 1), unless it is a JSON string (quoted) or null where allowed."""
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if str not in options:
        return parse_value(text)
    if type(None) in options and text.strip().lower() in ("none", "null"):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return text
    return value if isinstance(value, str) else text


def _merge(old: dict, new: dict) -> dict:
    """``new`` over ``old``, section by section (a ``model={"channels": 16}`` override keeps the other model fields)."""
    out = dict(old)
    for key, value in new.items():
        out[key] = _merge(old[key], value) if isinstance(old.get(key), dict) and isinstance(value, dict) else value
    return out


# ---------------------------------------------------------------- descriptions of the keys

_EXTRA_HELP: dict[type, dict[str, str]] = {}


def document(cls: type[Config], **helps: str) -> None:
    """Describe fields of ``cls`` from outside its module (for configs whose fields carry no comment)."""
    _EXTRA_HELP.setdefault(cls, {}).update(helps)


@functools.lru_cache(maxsize=None)
def _comment_help(cls: type) -> dict[str, str]:
    """``name: type = default  # what it is`` -> {name: "what it is"}, read from the class source."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out, line_field = {}, {}
    for lineno, line in enumerate(source.splitlines(), 1):
        m = re.match(r"\s+([A-Za-z_]\w*)\s*:", line)
        if m:
            line_field[lineno] = m.group(1)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and tok.start[0] in line_field:
            out.setdefault(line_field[tok.start[0]], tok.string.lstrip("#").strip())
    return out


@functools.lru_cache(maxsize=None)
def _docstring_help(cls: type) -> dict[str, str]:
    """Google-style ``Attributes:`` entries (``name: text``) and prose ````name````: text`` in the docstring."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    out = {}
    for m in re.finditer(r"^\s+([A-Za-z_]\w*): (.+(?:\n\s{8,}.+)*)", doc, re.M):
        out[m.group(1)] = " ".join(m.group(2).split())
    for m in re.finditer(r"``([A-Za-z_]\w*)``: ([^.;]+)", doc):
        out.setdefault(m.group(1), " ".join(m.group(2).split()))
    return out


def describe(cls: type[Config]) -> dict[str, str]:
    """{field: one-line description} of a config class, from (first found) the field's
    ``metadata["help"]``, its trailing ``# comment``, its entry in the class docstring, or
    :func:`document`; "" where none says anything."""
    comments, docs, extra = _comment_help(cls), _docstring_help(cls), _EXTRA_HELP.get(cls, {})
    out = {}
    for f in dataclasses.fields(cls):
        text = f.metadata.get("help") or comments.get(f.name) or docs.get(f.name) or extra.get(f.name, "")
        out[f.name] = text.replace("``", "")
    return out


def describe_keys(cfg: Config, _prefix: str = "") -> list[tuple[str, Any, str]]:
    """Every leaf key of ``cfg`` as (dotted key, value, description), sections flattened in field order."""
    rows = []
    helps = describe(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, Config):
            rows += describe_keys(value, _prefix + f.name + ".")
        else:
            rows.append((_prefix + f.name, _plain(value), helps[f.name]))
    return rows


def _unknown(cfg: Config, key: str, prefix: str, name: str, valid: Sequence[str], what: str) -> KeyError:
    """The unknown-key error, suggesting the nearest key at that level (or, failing that, the nearest
    dotted key anywhere in ``cfg``: ``lr`` -> ``train.lr``)."""
    near = [prefix + k for k in difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)]
    if not near:
        leaves = [k for k, _, _ in describe_keys(cfg)]
        near = difflib.get_close_matches(key, leaves, n=1, cutoff=0.6) or [
            k for k in leaves if k.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1]][:1]
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return KeyError(f"override {key!r}: {what} {name!r}{hint} (valid here: {', '.join(sorted(valid))})")


def apply_overrides(cfg: C, overrides: Sequence[str]) -> C:
    """Apply ``["train.lr=1e-3", "model.channels=[32,64]"]`` to a config, returning a new one.

    Unknown keys raise ``KeyError`` suggesting the nearest key and listing the valid keys at that
    level; a value that is not of the field's type raises ``ValueError`` naming the key and the
    type. A string field takes the
    text as typed; other values are JSON (``[1, 2]``, ``1e-3``, ``null``, ``{"channels": 16}`` for
    a whole section, merged into it).
    """
    data = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ValueError(f"override {item!r} has no key before '='")
        node, cls = data, type(cfg)
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if part not in node:
                raise _unknown(cfg, key, ".".join(parts[:i]) + "." * bool(i), part, list(node), "no section")
            if not isinstance(node[part], dict):
                unset = " (it is null here: set the whole section as a JSON object)" if node[part] is None else ""
                raise KeyError(f"override {key!r}: {part!r} is a value, not a section{unset}")
            node, cls = node[part], _config_type(typing.get_type_hints(cls)[part])
        if parts[-1] not in node:
            raise _unknown(cfg, key, ".".join(parts[:-1]) + "." * (len(parts) > 1), parts[-1], list(node),
                           "unknown key")
        value = _parse_for(typing.get_type_hints(cls)[parts[-1]], text)
        old = node[parts[-1]]
        node[parts[-1]] = _merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return type(cfg).from_dict(data)
