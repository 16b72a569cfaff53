"""A plain mapping (params.yaml) checked into frozen dataclasses.

:func:`build` turns a mapping into a dataclass, field by field after its type hints, and rejects
an unknown key, a missing one and a value of the wrong type with a message that names the key
(``train.image_size``) and what is allowed. The dataclasses' own ``__post_init__`` checks ranges
with :func:`check` and :func:`check_choice`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Mapping

from fsds.errors import ConfigError

# Scalar type hints: which values each accepts (a YAML bool is no number) and how to say what it expects.
SCALARS = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
}


def build(cls: type, raw: Any, prefix: str, raw_fields: tuple[str, ...] = ()) -> Any:
    """Recursively turn a mapping into dataclass ``cls``, checking keys and types; every field
    without a declared default must be present. ``raw_fields`` are passed through as given (the
    caller parsed them)."""
    where = prefix or "params.yaml"
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{key_of(prefix, unknown[0])}: unknown key; allowed keys: {', '.join(sorted(fields))}")
    required = [name for name, f in fields.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in raw]
    if missing:
        raise ConfigError(f"{key_of(prefix, missing[0])}: missing from params.yaml; add it "
                          "(the repository's params.yaml has every key, with what it means)")
    kwargs = {}
    for name, value in raw.items():
        key = key_of(prefix, name)
        hint = hints[name]
        if name in raw_fields:
            kwargs[name] = value  # parsed by the caller
        elif dataclasses.is_dataclass(hint):
            kwargs[name] = build(hint, value, key)
        else:
            kwargs[name] = coerce(value, hint, key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # pragma: no cover - defensive
        raise ConfigError(f"{where}: {exc}") from exc


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a simple type hint (int, float, str, bool, Literal, tuple, unions)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc).split(": ", 1)[-1])
        raise ConfigError(f"{key}: {' or '.join(errors)}")
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{key}: expected one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin is tuple and typing.get_args(hint)[0] is int:
        if not isinstance(value, (list, tuple)) or not value or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{key}: expected a non-empty list of integers, got {value!r}")
        return tuple(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value) or not value:
            raise ConfigError(f"{key}: expected a non-empty list of names, got {value!r}")
        return tuple(value)
    if hint in SCALARS:
        accepts, expected = SCALARS[hint]
        if not accepts(value):
            raise ConfigError(f"{key}: expected {expected}, got {value!r}")
        return float(value) if hint is float else value
    raise ConfigError(f"{key}: unsupported type {hint!r}")  # pragma: no cover


def key_of(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def check_choice(value: str, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {value!r}")
