"""Request parameters of the simulated API: parsing with Keepa's statuses.

A value that is not what the parameter takes (not a number, a bad list, a missing field) is
400 REQUEST_REJECTED; a well-formed value outside the allowed range is 405
METHOD_NOT_ALLOWED (docs/KEEPA.md, "Errors").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.errors import FleetError

ERROR_TYPES = {
    400: "REQUEST_REJECTED",
    402: "PAYMENT_REQUIRED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    429: "NOT_ENOUGH_TOKEN",
    500: "INTERNAL_SERVER_ERROR",
    503: "SERVICE_UNAVAILABLE",
}

# Keepa's Amazon locales (docs/KEEPA.md, "Data conventions").
DOMAINS = frozenset({1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12})


class ApiError(FleetError):
    """A request the simulated API answers with an error status (400, 402, 405...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{ERROR_TYPES.get(status, status)}: {message}")
        self.status = status
        self.message = message

    def body(self) -> dict[str, Any]:
        """Keepa's error body: ``{"error": {"type", "message", "details"}}`` beside the
        envelope — except a 429, which is the envelope alone (recorded)."""
        if self.status == 429:
            return {}
        kind = ERROR_TYPES.get(self.status, "ERROR")
        return {"error": {"type": kind, "message": self.message, "details": None}}


def rejected(message: str) -> ApiError:
    return ApiError(400, message)


def out_of_range(message: str) -> ApiError:
    return ApiError(405, message)


def as_int(name: str, raw: Any) -> int:
    """An integer from a query string value or a JSON number; 400 otherwise."""
    if isinstance(raw, bool):
        raise rejected(f"{name} must be an integer")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        text = raw.strip()
        if text.lstrip("-").isdigit() and len(text) <= 18:
            return int(text)
    raise rejected(f"{name} must be an integer")


def int_param(
    query: Mapping[str, str],
    name: str,
    *,
    default: int | None = None,
    lo: int | None = None,
    hi: int | None = None,
) -> int | None:
    """An optional integer query parameter: absent -> default; not an int -> 400; outside
    [lo, hi] -> 405."""
    if name not in query:
        return default
    value = as_int(name, query[name])
    check_range(name, value, lo, hi)
    return value


def check_range(name: str, value: int, lo: int | None, hi: int | None) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        lo_text = "-inf" if lo is None else str(lo)
        hi_text = "inf" if hi is None else str(hi)
        raise out_of_range(f"{name}={value} is outside {lo_text}..{hi_text}")


def flag_param(query: Mapping[str, str], name: str) -> bool:
    """A 0/1 switch; anything else is 400."""
    if name not in query:
        return False
    raw = query[name].strip()
    if raw not in ("0", "1"):
        raise rejected(f"{name} must be 0 or 1")
    return raw == "1"


def domain_param(raw: Any, name: str = "domain") -> int:
    value = as_int(name, raw)
    if value not in DOMAINS:
        raise out_of_range(f"{name}={value} is not a Keepa domain")
    return value
