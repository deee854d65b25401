"""Which products are deals: pure functions over a Keepa product, settings ``filters.*``.

``facts(product)`` reads the figures the filters need from a ``/product`` answer (with
``stats``); ``check(facts, settings)`` returns None when the product qualifies, else the first
``Failure`` — the filter's name and the figures that failed it. The filters, in order:

================  =========================================================================
filter            rejects when
================  =========================================================================
``no_price``      there is no current NEW price or no 90-day average (nothing to compare)
``sales_rank``    the sales rank (now, else its 90-day average) is unknown or above
                  ``filters.max_sales_rank``
``drop``          ``drop_percent`` < ``filters.min_drop_percent``
``profit``        ``profit`` < ``filters.min_profit``
``offers``        more than ``filters.max_offers`` competing new offers (an unknown count
                  passes: nothing to judge)
================  =========================================================================

A limit itself passes (a rank equal to ``max_sales_rank``, a drop equal to the minimum...).

with, all prices in the smallest currency unit of the judged price type — ``filters.price_type``,
NEW (index 1) unless a query says otherwise (a USED hunt sets 2 and is judged on USED prices):

- ``drop_percent = (avg90 - current) / avg90 × 100`` — how far the current price is below its
  90-day average;
- ``profit = avg90 - current - avg90 × fee_percent / 100`` (rounded down) — buy at the current
  price, sell back at the 90-day average, pay the marketplace fee on that sale.

NEW (any seller's lowest new price, Amazon's included) is the default price type because the
offer count filter is about new offers and most products have no Amazon offer at all. When the
judged price type is USED (2) the offer count is the used-offer count (COUNT_USED, 12): the
competition of a used hunt is other used offers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from common.config import FilterSettings

PRICE_NEW = 1  # Keepa csv/stats index of the NEW price type
PRICE_USED = 2
SALES_RANK = 3
COUNT_NEW = 11
COUNT_USED = 12
CONDITION_NEW = 1  # Keepa offer conditions (Offer.java OfferCondition)
USED_CONDITIONS = (2, 3, 4, 5)

FILTER_NAMES = ("no_price", "sales_rank", "drop", "profit", "offers")


@dataclass(frozen=True)
class Facts:
    """What the filters look at, read from one product."""

    asin: str
    title: str | None
    current: int | None  # NEW price now; None when there is no offer
    avg90: int | None  # NEW 90-day average; None when unknown
    sales_rank: int | None
    offers: int | None  # competing offers (new, or used for a USED hunt); None when unknown
    price_type: int = PRICE_NEW  # the price type current/avg90 are of

    @property
    def drop_percent(self) -> float | None:
        if self.current is None or not self.avg90:
            return None
        return round((self.avg90 - self.current) / self.avg90 * 100.0, 2)

    def profit(self, fee_percent: float) -> int | None:
        if self.current is None or self.avg90 is None:
            return None
        return math.floor(self.avg90 - self.current - self.avg90 * fee_percent / 100.0)

    def as_dict(self, fee_percent: float) -> dict[str, Any]:
        out = asdict(self)
        out["drop_percent"] = self.drop_percent
        out["profit"] = self.profit(fee_percent)
        return out


@dataclass(frozen=True)
class Failure:
    """The first filter a product failed: its name and the figures (value and limit)."""

    filter: str
    detail: dict[str, Any]


def facts(product: Mapping[str, Any], price_type: int = PRICE_NEW) -> Facts:
    """The filter figures of one Keepa product (``stats`` requested), prices of
    ``price_type``. Missing data is None."""
    stats = product.get("stats") or {}
    current = _price(_at(stats.get("current"), price_type))
    avg90 = _price(_at(stats.get("avg90"), price_type))
    if avg90 is None:
        # With stats=90, "avg" is the 90-day weighted mean as well.
        avg90 = _price(_at(stats.get("avg"), price_type))
    rank = _price(_at(stats.get("current"), SALES_RANK))
    if rank is None:
        # Keepa's current rank is -1 for a while when a product's rank is being refreshed,
        # while its 90-day average is known (a recorded body has it): judge on the average
        # then, rather than rejecting a product whose rank is only momentarily missing.
        rank = _price(_at(stats.get("avg90"), SALES_RANK))
    return Facts(
        asin=str(product.get("asin", "")).upper(),
        title=product.get("title") if isinstance(product.get("title"), str) else None,
        current=current,
        avg90=avg90,
        sales_rank=rank,
        offers=_offer_count(product, stats, price_type),
        price_type=price_type,
    )


def check(f: Facts, settings: FilterSettings) -> Failure | None:
    """None when the product qualifies, else the first filter it fails (see the table)."""
    if f.current is None or not f.avg90:
        return Failure("no_price", {"current": f.current, "avg90": f.avg90})
    if f.sales_rank is None or f.sales_rank > settings.max_sales_rank:
        return Failure("sales_rank", {"value": f.sales_rank, "max": settings.max_sales_rank})
    drop = f.drop_percent
    if drop is None or drop < settings.min_drop_percent:
        return Failure(
            "drop",
            {
                "value": drop,
                "min": settings.min_drop_percent,
                "current": f.current,
                "avg90": f.avg90,
            },
        )
    profit = f.profit(settings.fee_percent)
    if profit is None or profit < settings.min_profit:
        return Failure(
            "profit",
            {
                "value": profit,
                "min": settings.min_profit,
                "current": f.current,
                "avg90": f.avg90,
                "fee_percent": settings.fee_percent,
            },
        )
    if f.offers is not None and f.offers > settings.max_offers:
        return Failure("offers", {"value": f.offers, "max": settings.max_offers})
    return None


def _at(values: Any, index: int) -> Any:
    if isinstance(values, Sequence) and not isinstance(values, str) and len(values) > index:
        return values[index]
    return None


def _price(value: Any) -> int | None:
    """Keepa's integers; -1 (and anything negative or not a number) means none."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if value >= 0 else None


def _offer_count(
    product: Mapping[str, Any], stats: Mapping[str, Any], price_type: int = PRICE_NEW
) -> int | None:
    """Competing offers: the COUNT_NEW figure (COUNT_USED for a USED hunt), else the live
    offers of that condition returned with ``offers=N`` (a lower bound when there are more
    than N). Live means listed in ``liveOffersOrder``: ``offers`` also holds offers no longer
    listed. ``stats.totalOfferCount`` counts every condition, so it is no count of either."""
    count = _price(_at(stats.get("current"), COUNT_USED if price_type == PRICE_USED else COUNT_NEW))
    if count is not None:
        return count
    live = product.get("liveOffersOrder")
    if not isinstance(live, list):
        return None
    offers = product.get("offers")
    if not isinstance(offers, list):
        return len(live)  # no condition to tell them apart
    wanted = USED_CONDITIONS if price_type == PRICE_USED else (CONDITION_NEW,)
    n = 0
    for index in live:
        offer = _at(offers, index) if isinstance(index, int) and index >= 0 else None
        if isinstance(offer, Mapping) and offer.get("condition") in wanted:
            n += 1
    return n
