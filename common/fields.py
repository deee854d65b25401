"""Checking one setting's raw value against its declaration (type, bounds, choices).

Shared by ``common/config.py`` (every setting) and ``common/queries.py`` (a query's own
``[filters]``), so both give the same errors; here so neither imports the other for it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from common.errors import ConfigError


def coerce_setting(name: str, f: dataclasses.Field[Any], raw: Any, origin: str) -> Any:
    kind = type(f.default)
    shown = "***" if f.metadata.get("secret") else repr(raw)
    where = f"(from {origin})"
    try:
        if kind is bool:
            if isinstance(raw, str):
                if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError
                value: Any = raw.lower() in ("1", "true", "yes")
            else:
                value = bool(raw)
        elif kind is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            value = int(raw)
        elif kind is float:
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
            if value != value:  # NaN
                raise ValueError
        else:
            if not isinstance(raw, str):
                raise ValueError
            value = raw
    except (TypeError, ValueError):
        raise ConfigError(name, f"{shown} is not a valid {kind.__name__} {where}") from None
    lo, hi, choices = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("choices")
    if lo is not None and value < lo:
        raise ConfigError(name, f"{shown} is below the minimum {lo} {where}")
    if hi is not None and value > hi:
        raise ConfigError(name, f"{shown} is above the maximum {hi} {where}")
    if choices and value not in choices:
        raise ConfigError(name, f"{shown} is not one of {', '.join(choices)} {where}")
    return value
