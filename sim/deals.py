"""The simulated ``/deal`` feed: the catalog's active dips, filtered, sorted and paged.

A deal is a dip of the catalog (``sim.catalog``) that is active at the feed time: it was
created (``creationDate``) when the dip started, and its figures are the product's as of its
last update, which the dip start itself counts as (so every deal is shown with its drop).
Listed are only products whose figures for the selected price type dropped below their
average over the selected date range, updated in the last 12 hours.

``selection`` keys (docs/KEEPA.md; others are ignored): ``page`` (0-based, 150 a page),
``domainId`` (required), ``priceTypes`` (required, exactly one), ``dateRange`` (0 day = the
last 48 h as Keepa computes it, 1 week, 2 month, 3 90 days), ``sortType`` (1 deal age newest
first, 2 absolute delta, 3 sales rank, 4 percentage delta; negative inverts; default 1), and the
filters ``currentRange``, ``deltaRange``, ``deltaPercentRange`` (on the size of the drop),
``salesRankRange`` (-1 as upper bound = open), ``includeCategories``, ``excludeCategories``,
``titleSearch``, ``hasReviews``, ``mustHaveAmazonOffer``, ``mustNotHaveAmazonOffer``.

``delta`` and ``deltaPercent`` have Keepa's sign, ``avg - current``: positive = the price
dropped; sort 2 and 4 put the highest (the biggest drop) first; sort 1 is not invertible (-1 is
405). Range options apply only with ``isRangeEnabled``, ``hasReviews`` and the Amazon-offer
filters only with ``isFilterEnabled`` (silently ignored otherwise); paging reaches 10,000 deals.

``stale_s`` (admin ``/_sim/feed``) freezes the feed that many seconds in
the past: every deal is then at least that old.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sim.catalog import (
    AMAZON,
    DIP_MAX_S,
    HOUR_S,
    N_TYPES,
    ROOT_CATEGORIES,
    SALES,
    Catalog,
    Dip,
    Profile,
    keepa_minute,
)
from sim.params import as_int, check_range, domain_param, out_of_range, rejected

DEAL_PAGE_SIZE = 150
DEAL_MAX_AGE_S = 12 * HOUR_S  # only products updated in the last 12 hours
DATE_RANGE_DAYS = (2.0, 7.0, 31.0, 90.0)  # day (Keepa uses the last 48 h), week, month, 90 days
SORT_TYPES = (1, 2, 3, 4)
MAX_PAGE = 10_000
MAX_REACHABLE = 10_000  # DealRequest.java / docs/KEEPA.md: at most 10,000 deals by paging
INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class DealQuery:
    page: int
    domain_id: int
    price_type: int
    date_range: int
    sort_type: int
    current_range: tuple[int, int] | None = None
    delta_range: tuple[int, int] | None = None
    delta_percent_range: tuple[int, int] | None = None
    sales_rank_range: tuple[int, int] | None = None
    include_categories: frozenset[int] = frozenset()
    exclude_categories: frozenset[int] = frozenset()
    title_words: tuple[str, ...] = ()
    has_reviews: bool = False
    must_have_amazon: bool = False
    must_not_have_amazon: bool = False


def parse_selection(sel: Any) -> DealQuery:
    """Check a ``selection`` object: 400 when malformed, 405 when a value is out of range."""
    if not isinstance(sel, Mapping):
        raise rejected("selection must be a JSON object")
    if "domainId" not in sel:
        raise rejected("selection lacks domainId")
    domain_id = domain_param(sel["domainId"], "domainId")
    types = sel.get("priceTypes")
    if not isinstance(types, list) or len(types) != 1:
        raise rejected("priceTypes must be a list of exactly one price type")
    price_type = as_int("priceTypes", types[0])
    check_range("priceTypes", price_type, 0, N_TYPES - 1)
    page = as_int("page", sel.get("page", 0))
    check_range("page", page, 0, MAX_PAGE)
    date_range = as_int("dateRange", sel.get("dateRange", 0))
    # 4 ("all ranges") is not in the Java client's comment (0..3), but the replaced system's
    # query used it and Keepa answered: here it judges drops over the widest range, 90 days
    # (inferred, not documented).
    check_range("dateRange", date_range, 0, len(DATE_RANGE_DAYS))
    sort_type = as_int("sortType", sel.get("sortType", 1))
    if abs(sort_type) not in SORT_TYPES:
        raise out_of_range(f"sortType={sort_type} is not one of ±1..4")
    if sort_type == -1:
        # DealRequest.java: "1 - deal age. Newest deals first, not invertible."
        raise out_of_range("sortType=-1: deal age (1) is not invertible")
    ranges = _bool(sel, "isRangeEnabled")  # range options apply only with their switch
    filters = _bool(sel, "isFilterEnabled")  # filter options likewise
    title = sel.get("titleSearch")
    if title is not None and not isinstance(title, str):
        raise rejected("titleSearch must be a string")
    return DealQuery(
        page=page,
        domain_id=domain_id,
        price_type=price_type,
        date_range=date_range,
        sort_type=sort_type,
        current_range=_range(sel, "currentRange") if ranges else None,
        delta_range=_range(sel, "deltaRange") if ranges else None,
        delta_percent_range=_range(sel, "deltaPercentRange") if ranges else None,
        sales_rank_range=_range(sel, "salesRankRange") if ranges else None,
        include_categories=_categories(sel, "includeCategories"),
        exclude_categories=_categories(sel, "excludeCategories"),
        title_words=tuple(title.lower().split()) if title else (),
        has_reviews=filters and _bool(sel, "hasReviews"),
        must_have_amazon=filters and _bool(sel, "mustHaveAmazonOffer"),
        must_not_have_amazon=filters and _bool(sel, "mustNotHaveAmazonOffer"),
    )


def _range(sel: Mapping[str, Any], name: str) -> tuple[int, int] | None:
    raw = sel.get(name)
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) != 2:
        raise rejected(f"{name} must be a list [min, max]")
    lo, hi = as_int(name, raw[0]), as_int(name, raw[1])
    hi = INT_MAX if hi == -1 else hi
    if lo < 0 or hi < lo:
        raise out_of_range(f"{name}={raw} is not a valid range")
    return lo, hi


def _categories(sel: Mapping[str, Any], name: str) -> frozenset[int]:
    raw = sel.get(name)
    if raw is None:
        return frozenset()
    if not isinstance(raw, list):
        raise rejected(f"{name} must be a list of category ids")
    return frozenset(as_int(name, c) for c in raw)


def _bool(sel: Mapping[str, Any], name: str) -> bool:
    raw = sel.get(name, False)
    if raw is None:
        return False
    if not isinstance(raw, bool):
        raise rejected(f"{name} must be true or false")
    return raw


@dataclass(frozen=True)
class _Candidate:
    dip: Dip
    profile: Profile
    data_time: float
    current: list[int]
    avg: list[int]  # over the selected date range

    def delta(self, ptype: int) -> int:
        """Keepa's sign: positive = the price dropped (reference minus current)."""
        return self.avg[ptype] - self.current[ptype]

    def delta_percent(self, ptype: int) -> int:
        return _percent(self.delta(ptype), self.avg[ptype])


class DealFeed:
    """The deal feed of one catalog. Event records are cached for the window of active dips."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.stale_s = 0.0
        self._lock = threading.Lock()
        self._events: dict[int, Dip] = {}
        # (event k, data time, date range) -> (current, avg): a product's figures change only
        # when Keepa's copy of it does, so repeated pages need not recompute them.
        self._figures: dict[tuple[int, float, int], tuple[list[int], list[int]]] = {}

    def set_stale(self, stale_s: float) -> None:
        self.stale_s = max(0.0, stale_s)

    def _active(self, t: float) -> list[Dip]:
        """Dips active at ``t``, newest first."""
        cat = self.catalog
        k_hi = cat.event_index_at(t)
        k_lo = cat.event_index_at(t - DIP_MAX_S) - 1
        with self._lock:
            events = self._events
            for k in range(k_lo, k_hi + 1):
                if k not in events:
                    events[k] = cat.event(k)
            active = [events[k] for k in range(k_hi, k_lo - 1, -1)]
            if len(events) > 3 * (k_hi - k_lo + 1):
                self._events = {k: v for k, v in events.items() if k_lo <= k <= k_hi}
                self._figures = {f: v for f, v in self._figures.items() if k_lo <= f[0] <= k_hi}
        return [d for d in active if d.start <= t < d.end]

    def _candidates(self, q: DealQuery, t: float) -> Iterator[_Candidate]:
        cat = self.catalog
        days = DATE_RANGE_DAYS[min(q.date_range, len(DATE_RANGE_DAYS) - 1)]
        for dip in self._active(t):
            p = cat.profile(dip.index)
            data_time = cat.last_update(p, t)
            if t - data_time > DEAL_MAX_AGE_S:
                continue
            cache_key = (dip.k, data_time, q.date_range)
            figures = self._figures.get(cache_key)
            if figures is None:
                figures = (cat.values(p, data_time), cat.averages(p, data_time, days))
                with self._lock:
                    self._figures[cache_key] = figures
            current, avg = figures
            if current[q.price_type] < 0:
                continue
            c = _Candidate(dip, p, data_time, current, avg)
            if avg[q.price_type] <= 0 or c.delta(q.price_type) <= 0:
                continue  # not a drop for this price type and range
            if _passes(c, q):
                yield c

    def page(self, q: DealQuery, now: float) -> dict[str, Any]:
        """The ``deals`` object of one page: ``dr`` and the category summary of the page."""
        t = now - self.stale_s
        start = q.page * DEAL_PAGE_SIZE
        end = min(start + DEAL_PAGE_SIZE, MAX_REACHABLE)  # paging reaches 10,000 deals at most
        candidates = self._candidates(q, t)
        if start >= end:
            chosen: list[_Candidate] = []
        elif q.sort_type == 1:
            # Newest first is the order of _active: stop as soon as the page is full.
            chosen = list(itertools.islice(candidates, start, end))
        else:
            chosen = sorted(candidates, key=lambda c: _sort_key(c, q))[start:end]
        deals = [self._deal(c) for c in chosen]
        cats: dict[int, int] = {}
        for c in chosen:
            cats[c.profile.root_cat] = cats.get(c.profile.root_cat, 0) + 1
        return {
            "dr": deals,
            "categoryIds": list(cats),
            "categoryNames": [_category_name(cid) for cid in cats],
            "categoryCount": list(cats.values()),
        }

    def _deal(self, c: _Candidate) -> dict[str, Any]:
        cat = self.catalog
        avgs = [cat.averages(c.profile, c.data_time, days) for days in DATE_RANGE_DAYS]
        delta = [_deltas(c.current, a) for a in avgs]
        delta_pct = [_percents(d, a) for d, a in zip(delta, avgs, strict=True)]
        return {
            "asin": c.profile.asin,
            "title": c.profile.title,
            "rootCat": c.profile.root_cat,
            "categories": [c.profile.sub_cat],
            "current": c.current,
            "avg": avgs,
            "delta": delta,
            "deltaPercent": delta_pct,
            "creationDate": keepa_minute(c.dip.start),
            "lastUpdate": keepa_minute(c.data_time),
        }


def _deltas(current: list[int], avg: list[int]) -> list[int]:
    """``avg - current`` per price type (Keepa's sign: positive = dropped); 0 where either is
    unknown (as Keepa does)."""
    return [a - c if c >= 0 and a >= 0 else 0 for c, a in zip(current, avg, strict=True)]


def _percent(delta: int, avg: int) -> int:
    """``delta`` in percent of ``avg``; 0 where there is no average."""
    return round(delta * 100 / avg) if avg > 0 else 0


def _percents(delta: list[int], avg: list[int]) -> list[int]:
    return [_percent(d, a) for d, a in zip(delta, avg, strict=True)]


def _passes(c: _Candidate, q: DealQuery) -> bool:
    pt = q.price_type
    p = c.profile
    if q.current_range and not q.current_range[0] <= c.current[pt] <= q.current_range[1]:
        return False
    if q.delta_range and not q.delta_range[0] <= abs(c.delta(pt)) <= q.delta_range[1]:
        return False
    pct = abs(c.delta_percent(pt))
    if q.delta_percent_range and not q.delta_percent_range[0] <= pct <= q.delta_percent_range[1]:
        return False
    if q.sales_rank_range:
        rank = c.current[SALES]
        if rank < 0 or not q.sales_rank_range[0] <= rank <= q.sales_rank_range[1]:
            return False
    cats = {p.root_cat, p.sub_cat}
    if q.include_categories and not cats & q.include_categories:
        return False
    if q.exclude_categories and cats & q.exclude_categories:
        return False
    if q.title_words and not all(w in p.title.lower() for w in q.title_words):
        return False
    if q.has_reviews and p.rating < 0:
        return False
    if q.must_have_amazon and c.current[AMAZON] < 0:
        return False
    return not (q.must_not_have_amazon and c.current[AMAZON] >= 0)


def _sort_key(c: _Candidate, q: DealQuery) -> tuple[int, float, float, str]:
    """Ascending key: the first item is the first deal of the page. A product without a sales
    rank comes last when sorting by rank, either way."""
    pt = q.price_type
    kind = abs(q.sort_type)
    missing = 0
    if kind == 1:
        value = -c.dip.start  # newest first
    elif kind == 2:
        value = -float(c.delta(pt))  # highest delta (biggest drop) first
    elif kind == 3:
        rank = c.current[SALES]
        missing = int(rank < 0)
        value = float(rank)  # best rank first
    else:
        value = -float(c.delta_percent(pt))
    if q.sort_type < 0:
        value = -value
    return (missing, value, -c.dip.start, c.profile.asin)


_CATEGORY_NAMES = dict(ROOT_CATEGORIES)


def _category_name(cid: int) -> str:
    return _CATEGORY_NAMES.get(cid, str(cid))
