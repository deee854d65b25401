"""The deal selection a query sends to Keepa's ``/deal``, checked key by key.

``SELECTION_FIELDS`` are the fields of the deal request of Keepa's official Java client
(``DealRequest``), with their JSON types and the ranges Keepa documents (docs/KEEPA.md).
``check_selection`` refuses an unknown key, a wrong type or an out-of-range value
(``ConfigError``) and returns a warning for each option Keepa would ignore (a range option
without ``isRangeEnabled``, a filter option without ``isFilterEnabled``). The queries that
carry selections are ``common/queries.py``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.errors import ConfigError

INT_MAX = 2**31 - 1
DOMAINS = (1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12)  # 7 is reserved
PRICE_TYPE_MAX = 35  # csv / stats indices 0..35


# Kinds of JSON value a selection field takes.
INT, BOOL, STR, INT_LIST, STR_LIST, RANGE = "int", "bool", "str", "int list", "str list", "range"
# Which switch a field needs for Keepa to apply it.
RANGE_SWITCH, FILTER_SWITCH = "isRangeEnabled", "isFilterEnabled"


@dataclass(frozen=True)
class SelectionField:
    """One key of Keepa's deal request: its JSON kind, allowed values, the switch it needs."""

    kind: str
    lo: int | None = None
    hi: int | None = None
    switch: str | None = None
    choices: tuple[int, ...] | None = None
    length: int | None = None  # lists: exactly this many entries
    note: str = ""


def _attr() -> SelectionField:
    return SelectionField(STR_LIST, note="product attribute values (all must match)")


# The fields of Keepa's deal request (the official Java client's DealRequest), written out
# here with the ranges Keepa documents for them. ``dateRange`` 4 is not in the Java client's
# comment (0..3) but Keepa answers it ("all ranges combined"), and the deals page generates it:
# the system this fleet replaces ran on such a query.
SELECTION_FIELDS: dict[str, SelectionField] = {
    "page": SelectionField(INT, 0, 0, note="the fleet pages itself: leave it 0 or out"),
    "domainId": SelectionField(INT, choices=DOMAINS, note="Amazon locale"),
    "priceTypes": SelectionField(INT_LIST, 0, PRICE_TYPE_MAX, length=1, note="exactly one"),
    "dateRange": SelectionField(INT, 0, 4, note="0 day, 1 week, 2 month, 3 90 days, 4 all"),
    "sortType": SelectionField(
        INT, choices=(1, 2, 3, 4, -2, -3, -4), note="1 newest first (not invertible)"
    ),
    "includeCategories": SelectionField(INT_LIST, 0, 2**63 - 1, note="category node ids"),
    "excludeCategories": SelectionField(INT_LIST, 0, 2**63 - 1, note="category node ids"),
    "categorySearch": SelectionField(STR),
    "deltaRange": SelectionField(RANGE, 0, INT_MAX, switch=RANGE_SWITCH),
    "deltaPercentRange": SelectionField(
        RANGE, 0, INT_MAX, switch=RANGE_SWITCH, note="percent; Keepa's minimum is 10"
    ),
    "deltaLastRange": SelectionField(RANGE, 0, INT_MAX, switch=RANGE_SWITCH),
    "currentRange": SelectionField(RANGE, 0, INT_MAX, switch=RANGE_SWITCH),
    "salesRankRange": SelectionField(
        RANGE, 0, INT_MAX, switch=RANGE_SWITCH, note="-1 as upper bound = open"
    ),
    "isRangeEnabled": SelectionField(BOOL),
    "isFilterEnabled": SelectionField(BOOL),
    "isLowest": SelectionField(BOOL, switch=FILTER_SWITCH),
    "isLowest90": SelectionField(BOOL, switch=FILTER_SWITCH),
    "isLowestOffer": SelectionField(BOOL, switch=FILTER_SWITCH),
    "isBackInStock": SelectionField(BOOL, switch=FILTER_SWITCH),
    "isOutOfStock": SelectionField(BOOL, switch=FILTER_SWITCH),
    "titleSearch": SelectionField(STR, switch=FILTER_SWITCH),
    "filterErotic": SelectionField(BOOL, switch=FILTER_SWITCH),
    "hasReviews": SelectionField(BOOL, switch=FILTER_SWITCH),
    "isPrimeExclusive": SelectionField(BOOL, switch=FILTER_SWITCH),
    "mustHaveAmazonOffer": SelectionField(BOOL, switch=FILTER_SWITCH),
    "mustNotHaveAmazonOffer": SelectionField(BOOL, switch=FILTER_SWITCH),
    "singleVariation": SelectionField(BOOL, switch=FILTER_SWITCH),
    "minRating": SelectionField(INT, -1, 50, switch=FILTER_SWITCH, note="0..50, -1 off"),
    "warehouseConditions": SelectionField(
        INT_LIST, 1, 5, switch=FILTER_SWITCH, note="1 new, 2..5 used like new..acceptable"
    ),
    **{
        name: _attr()
        for name in (
            "material",
            "type",
            "manufacturer",
            "brand",
            "productGroup",
            "model",
            "color",
            "size",
            "unitType",
            "scent",
            "itemForm",
            "pattern",
            "style",
            "itemTypeKeyword",
            "targetAudienceKeyword",
            "edition",
            "format",
            "author",
            "binding",
            "languages",
        )
    },
}


def check_selection(selection: Any, where: str) -> list[str]:
    """Check a selection against ``SELECTION_FIELDS``; returns the warnings (options Keepa
    ignores without their switch). Raises ConfigError naming ``where`` and the key."""
    if not isinstance(selection, Mapping):
        raise ConfigError(where, f"the selection must be a JSON object, not {_kind(selection)}")
    for key, value in selection.items():
        spec = SELECTION_FIELDS.get(key)
        if spec is None:
            near = _near(key)
            hint = f" (did you mean {near!r}?)" if near else ""
            raise ConfigError(
                f"{where}: {key}", f"unknown key: not a field of Keepa's deal request{hint}"
            )
        _check_value(f"{where}: {key}", spec, value)
    if "priceTypes" not in selection:
        raise ConfigError(f"{where}: priceTypes", "is required (a list of one price type)")
    warnings = []
    for switch in (RANGE_SWITCH, FILTER_SWITCH):
        if selection.get(switch) is True:
            continue
        ignored = [
            k for k, v in selection.items() if SELECTION_FIELDS[k].switch == switch and _is_set(v)
        ]
        if ignored:
            warnings.append(
                f'{where}: {", ".join(ignored)} set without "{switch}": true — Keepa ignores them'
            )
    return warnings


def _check_value(where: str, spec: SelectionField, value: Any) -> None:
    if value is None:  # Keepa's JSON has null for "not used"
        return
    if spec.kind == BOOL:
        if not isinstance(value, bool):
            raise ConfigError(where, f"{value!r} is {_kind(value)}, not true or false")
    elif spec.kind == STR:
        if not isinstance(value, str):
            raise ConfigError(where, f"{value!r} is {_kind(value)}, not a string")
    elif spec.kind == INT:
        _check_int(where, spec, value)
    elif spec.kind == STR_LIST:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(where, f"{value!r} is not a list of strings")
    elif spec.kind == INT_LIST:
        if not isinstance(value, list):
            raise ConfigError(where, f"{value!r} is {_kind(value)}, not a list of integers")
        if spec.length is not None and len(value) != spec.length:
            raise ConfigError(where, f"{value!r} must hold exactly {spec.length} value(s)")
        for v in value:
            _check_int(where, spec, v)
    elif spec.kind == RANGE:
        if not isinstance(value, list) or len(value) != 2:
            raise ConfigError(where, f"{value!r} is not a range [min, max]")
        lo = _as_int(where, value[0])
        hi = _as_int(where, value[1])
        hi_open = INT_MAX if hi == -1 else hi
        if lo < 0 or lo > INT_MAX or hi_open < 0 or hi_open > INT_MAX:
            raise ConfigError(where, f"{value!r}: bounds must be 0..{INT_MAX} (-1 = open)")
        if hi_open < lo:
            raise ConfigError(where, f"{value!r}: the minimum is above the maximum")


def _as_int(where: str, value: Any) -> int:
    # Keepa (Gson) reads a JSON string of digits into an integer field, as the deals page's
    # own JSON has it ("domainId": "1"); anything else is refused.
    if isinstance(value, bool):
        raise ConfigError(where, f"{value!r} is a boolean, not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,19}", value.strip()):
        return int(value)
    raise ConfigError(where, f"{value!r} is {_kind(value)}, not an integer")


def _check_int(where: str, spec: SelectionField, value: Any) -> None:
    n = _as_int(where, value)
    if spec.choices is not None and n not in spec.choices:
        raise ConfigError(
            where, f"{value!r} is out of Keepa's range: one of {', '.join(map(str, spec.choices))}"
        )
    if (spec.lo is not None and n < spec.lo) or (spec.hi is not None and n > spec.hi):
        extra = f" ({spec.note})" if spec.note else ""
        raise ConfigError(where, f"{value!r} is out of Keepa's range {spec.lo}..{spec.hi}{extra}")


def _is_set(value: Any) -> bool:
    if value is None or value is False:
        return False
    return not (isinstance(value, list | str) and not value)


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _near(key: str) -> str | None:

    found = difflib.get_close_matches(key, list(SELECTION_FIELDS), n=1, cutoff=0.75)
    if not found:
        lowered = {k.lower(): k for k in SELECTION_FIELDS}
        return lowered.get(key.lower())
    return found[0]


# --- the [[queries]] part of the settings ------------------------------------------------
