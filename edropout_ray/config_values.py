"""A value read from YAML or `--set` checked against the type a config key declares."""

from __future__ import annotations

import math
import types
import typing

from .errors import ConfigError


def coerce(name: str, value, expected):
    """Accept a value of the declared type (ints for floats too); anything else is an error."""
    origin = typing.get_origin(expected)
    options = typing.get_args(expected) if origin in (typing.Union, types.UnionType) else (expected,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{name} must not be null")
    for option in options:
        if option is type(None):
            continue
        if option is bool:
            if isinstance(value, bool):
                return value
        elif option is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif option is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str) and _is_exponent_number(value):
                return float(value)  # YAML 1.1 reads 5e-4 (no dot) as a string
        elif option is str:
            if isinstance(value, str):
                return value
        elif typing.get_origin(option) is list:
            item = typing.get_args(option)[0]
            if isinstance(value, str):  # `--set export_formats=onnx`: one item
                value = [value]
            if isinstance(value, (list, tuple)) and all(isinstance(v, item) for v in value):
                return list(value)
        elif isinstance(value, option):
            return value
    wanted = " or ".join("null" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"{name} must be {wanted}, got {value!r} ({type(value).__name__})")


def _is_exponent_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return "e" in text.lower() and math.isfinite(float(text))
