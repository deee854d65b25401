"""The most a Keepa call can cost, from its path and parameters: the permit the gateway asks
for. The prices are the workers' (``common.costs``: one source for both); what this module
adds is reading them off a request it did not build.

=============  ==========================================================================
path           permit
=============  ==========================================================================
``/token``     none: answered from the broker's ledger, never sent to Keepa
``/deal``      ``DEAL_PAGE_COST`` (5), GET (``selection``) or POST (JSON body)
``/product``   per ASIN (or ``code``): ``offers_bound_per_product(offers)`` with ``offers``
               (12 for offers=20), else ``LIGHT_COST_PER_PRODUCT`` (1); + ``RATING_COST``
               with ``rating=1``; + ``BUYBOX_COST`` with ``buybox=1`` (without offers:
               Keepa ignores it with offers); + ``STOCK_COST`` with ``stock=1``
=============  ==========================================================================

Anything else is refused before a token is asked for (``BadCall``): an unknown path (404),
a method the path does not take (405), a parameter whose price is unknown or a value that
cannot be priced (400). Refusing beats guessing: a permit below the call's cost lets the
account be overdrawn and causes a 429 for everyone on the key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from common.costs import DEAL_PAGE_COST, LIGHT_COST_PER_PRODUCT, offers_bound_per_product
from common.keepa import MAX_ASINS_PER_CALL

# Extras per product (docs/KEEPA.md: buybox +2, rating up to +1). Keepa documents stock as an
# extra too; its price is taken as 2 per product, erring high.
RATING_COST = 1
BUYBOX_COST = 2
STOCK_COST = 2

TOKEN = "token"
PRODUCT = "product"
DEAL = "deal"

# Parameters each path takes (besides ``key``, which the gateway replaces). A parameter not
# listed here may cost something the gateway cannot know: refused.
PRODUCT_PARAMS = frozenset(
    {
        "domain",
        "asin",
        "code",
        "stats",
        "update",
        "history",
        "days",
        "offers",
        "only-live-offers",
        "rating",
        "buybox",
        "stock",
        "videos",
        "aplus",
        "rental",
    }
)
DEAL_PARAMS = frozenset({"selection", "domain"})
TOKEN_PARAMS: frozenset[str] = frozenset()
FLAG_PARAMS = ("history", "only-live-offers", "rating", "buybox", "stock", "videos", "aplus")
INT_PARAMS = ("domain", "update", "days", "offers")


class BadCall(Exception):
    """A request the gateway will not forward; ``status`` is the HTTP answer."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


@dataclasses.dataclass(frozen=True)
class Priced:
    path: str  # TOKEN, PRODUCT or DEAL
    cost: int  # the permit to ask for (0 for /token)


def normalize_path(raw_path: str) -> str:
    """``/product``, ``/product/`` and ``product`` are one path (Keepa takes all)."""
    return raw_path.strip("/")


def price(method: str, raw_path: str, params: Mapping[str, str]) -> Priced:
    """The permit for ``method raw_path?params`` (``params`` without repeats), or BadCall."""
    path = normalize_path(raw_path)
    if path == TOKEN:
        _check_method(method, path, ("GET",))
        _check_params(path, params, TOKEN_PARAMS)
        return Priced(TOKEN, 0)
    if path == DEAL:
        _check_method(method, path, ("GET", "POST"))
        _check_params(path, params, DEAL_PARAMS)
        if method == "GET" and not params.get("selection"):
            raise BadCall(400, "invalidParameter", "/deal by GET needs a selection parameter")
        return Priced(DEAL, DEAL_PAGE_COST)
    if path == PRODUCT:
        _check_method(method, path, ("GET",))
        _check_params(path, params, PRODUCT_PARAMS)
        return Priced(PRODUCT, product_cost(params))
    raise BadCall(
        404,
        "notFound",
        f"unknown path /{path[:100]}: the gateway serves /token, /product and /deal",
    )


def product_cost(params: Mapping[str, str]) -> int:
    """The most a ``/product`` call with these parameters can cost."""
    ints = {name: _int(params, name) for name in INT_PARAMS}
    flags = {name: _flag(params, name) for name in FLAG_PARAMS}
    if "asin" in params and "code" in params:
        raise BadCall(400, "invalidParameter", "give asin or code, not both")
    items_raw = params.get("asin", params.get("code", ""))
    items = {item.strip() for item in items_raw.split(",") if item.strip()}
    if not items:
        raise BadCall(400, "invalidParameter", "/product needs asin (or code): none given")
    if len(items) > MAX_ASINS_PER_CALL:
        raise BadCall(
            400,
            "invalidParameter",
            f"{len(items)} items in one /product call: at most {MAX_ASINS_PER_CALL}",
        )
    if ints["domain"] is None:
        raise BadCall(400, "invalidParameter", "/product needs domain")
    offers = ints["offers"]
    if offers is not None and offers < 0:
        raise BadCall(400, "invalidParameter", f"offers={offers} cannot be priced")
    per = offers_bound_per_product(offers) if offers else LIGHT_COST_PER_PRODUCT
    if flags["rating"]:
        per += RATING_COST
    if flags["buybox"] and not offers:
        per += BUYBOX_COST
    if flags["stock"]:
        per += STOCK_COST
    return max(1, math.ceil(per * len(items) - 1e-9))


def _check_method(method: str, path: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise BadCall(
            405, "methodNotAllowed", f"/{path} takes {' or '.join(allowed)}, not {method[:16]}"
        )


def _check_params(path: str, params: Mapping[str, str], known: frozenset[str]) -> None:
    unknown = sorted(set(params) - known - {"key"})
    if unknown:
        shown = ", ".join(repr(u[:40]) for u in unknown[:5])
        raise BadCall(
            400,
            "invalidParameter",
            f"/{path}: the gateway cannot price parameter {shown}; it knows "
            f"{', '.join(sorted(known)) or 'none'}",
        )


def _int(params: Mapping[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadCall(400, "invalidParameter", f"{name}={raw[:40]!r} is not an integer") from None


def _flag(params: Mapping[str, str], name: str) -> bool:
    value = _int(params, name)
    if value not in (None, 0, 1):
        raise BadCall(400, "invalidParameter", f"{name} must be 0 or 1, not {value}")
    return bool(value)
