"""Import a user object named as 'package.module:attribute'."""

from __future__ import annotations

import importlib

from .errors import ConfigError


def import_object(spec: str, what: str):
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"{what} {spec!r} must look like 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"cannot import module {module_name!r} for {what} {spec!r} ({error}); "
            "check the name and that it is on PYTHONPATH"
        ) from error
    try:
        found = getattr(module, attribute)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no attribute {attribute!r} ({what} {spec!r})") from None
    if not callable(found):
        raise ConfigError(f"{what} {spec!r} is not callable")
    return found
