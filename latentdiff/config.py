"""Frozen dataclass configs with dict round trips and ``--set a.b=c`` overrides.

Every component has one frozen dataclass config. Configs nest (a field whose
type is another config), serialise to plain JSON-able dicts and come back
with :meth:`Config.from_dict`, which rejects unknown keys by name.
"""

from __future__ import annotations

import dataclasses
import json
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
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise KeyError(f"{cls.__name__}: unknown keys {sorted(unknown)}; valid: {sorted(names)}")
        kwargs = {}
        for key, value in data.items():
            sub = _config_type(hints[key])
            if sub is not None and isinstance(value, dict):
                value = sub.from_dict(value)
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[key] = value
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


def parse_value(text: str) -> Any:
    """Parse an override value: JSON where it parses (numbers, bools, lists, null), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered in ("none", "null"):
            return None
        return text


def apply_overrides(cfg: C, overrides: Sequence[str]) -> C:
    """Apply ``["train.lr=1e-3", "model.channels=[32,64]"]`` to a config, returning a new one.

    Unknown keys raise ``KeyError`` listing the valid keys at that level.
    """
    data = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise KeyError(f"override {key!r}: no section {part!r}; valid: {sorted(node)}")
            node = node[part]
        if parts[-1] not in node:
            raise KeyError(f"override {key!r}: unknown key {parts[-1]!r}; valid: {sorted(node)}")
        node[parts[-1]] = parse_value(text)
    return type(cfg).from_dict(data)
