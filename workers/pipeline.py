"""The stage machinery: what every pipeline stage shares (``workers/stages/`` holds the
stages themselves, and ``build_stages``).

``Stage`` is what the runtime drives: it asks each stage for its ``urgency(now)`` and runs
``run_once(now)`` of the most urgent; ``now`` is wall-clock epoch seconds (``time.time()``),
the clock the database and Keepa's deal times use. ``Pipeline`` is the context the stages
share (settings, Keepa client, permit client, storage, cost models, figures); ``judge`` and
``deal_row`` turn a Keepa product into a filtered deal row. Stages spend tokens only through
``permits.call`` and return claims with ``give_back()``.

This module imports no stage: the stages import it (no import cycle to dodge).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from common.config import FilterSettings, Settings
from common.costs import ProductCostModel
from common.errors import PermitRejected
from common.keepa import KeepaClient, KeepaResponse
from common.procinfo import this_host
from common.protocol import RejectReason
from common.queries import DEFAULT_QUERY_NAME, Query, queries_of
from common.storage import Rejection, Storage
from workers.filters import PRICE_NEW, Facts, check, facts

if TYPE_CHECKING:
    from workers.permit_client import PermitClient

log = logging.getLogger(__name__)

ROLES = ("deals", "ingest", "refresh", "all")
# Shrinking a batch after "too_large" converges in a few steps; this bounds the loop.
MAX_TOO_LARGE_RETRIES = 8
# Urgency scale shared by the stages (the runtime runs the highest; 0 = nothing to do).
URGENCY_NONE = 0.0
URGENCY_BASE = 1.0
URGENCY_SPAN = 2.0  # backlog adds up to this much
URGENCY_AGING = 0.5  # a stage that has waited AGING_S gets up to this much more (breaks ties)
AGING_S = 60.0
# Permit priorities (higher is granted first). Committing survivors of a peek comes first:
# the peek's tokens are already spent and its claims expire. A /deal page is cheap and feeds
# everything else; refresh keeps live deals true; a new peek can wait.
PRIORITY_COMMIT = 3
PRIORITY_DEALS = 2
PRIORITY_REFRESH = 1
PRIORITY_PEEK = 0
PRIORITY_SPARE = -1  # work that is not due, on tokens the cap would drop: after everything
URGENCY_SPARE = 0.25  # below URGENCY_BASE: any due work of any stage goes first
# The fleet shares what it learned about costs through the database, so a new or restarted
# worker does not overdraw the account relearning them.
SHARED_COST_KEYS = {True: "cost_per_product", False: "cost_per_product_light"}
# Keepa's productType (read before anything else of a product).
PRODUCT_TYPE_INVALID = 4
PRODUCT_TYPE_VARIATION_PARENT = 5


class Stage(Protocol):
    """What the runtime (``workers.runtime``) drives."""

    name: str

    def urgency(self, now: float) -> float:
        """0 = nothing to do now; higher = more useful next."""
        ...

    def run_once(self, now: float) -> int:
        """One batch; returns the items done. Spends tokens only through ``permits.call``."""
        ...

    def give_back(self) -> None:
        """Return the claims in hand (SIGTERM or an error)."""
        ...


@dataclass
class FeedState:
    """What the deals stage last saw of the feed (reported with every batch)."""

    stale: bool | None = None
    newest_deal_age_s: float | None = None


@dataclass
class Pipeline:
    """What the stages of one worker share."""

    settings: Settings
    keepa: KeepaClient
    permits: PermitClient
    storage: Storage
    owner: str
    costs: ProductCostModel  # /product with offers (peek, commit)
    light_costs: ProductCostModel  # /product without offers (refresh)
    clock: Callable[[], float] = time.time
    feed: FeedState = field(default_factory=FeedState)

    @property
    def domain(self) -> int:
        return self.settings.keepa.domain

    def report(self, now: float, **extra: Any) -> None:
        pipeline = self.storage.totals(now)
        pipeline["cost_per_product"] = round(self.costs.per_product, 2)
        pipeline["cost_per_product_light"] = round(self.light_costs.per_product, 2)
        pipeline.update(extra)
        pipeline["queries"] = query_figures(self, now)  # issue 19: per deal query
        self.permits.report(
            {
                "pipeline": pipeline,
                "feed_stale": self.feed.stale,
                "newest_deal_age_s": self.feed.newest_deal_age_s,
            }
        )

    def product_call(
        self,
        stage: str,
        asins: list[str],
        *,
        history: bool,
        offers: bool,
        on_shrink: Callable[[list[str]], None],
        before_call: Callable[[list[str]], None] | None = None,
        priority: int = PRIORITY_PEEK,
        domain: int | None = None,
    ) -> tuple[KeepaResponse, list[str]]:
        """One ``/product`` call on ``asins`` (``stats=worker.stats_days``; with
        ``offers=worker.offers`` when ``offers``) under a permit of the estimated cost.

        On ``PermitRejected("too_large")`` the batch shrinks to what ``max_cost`` pays for:
        the ASINs cut off go to ``on_shrink`` (to be given back) and the call is retried.
        (The permit client keeps that ``max_cost``: the next batches are sized from it.)
        ``before_call`` runs once granted, right before the HTTP call (claim renewal).
        Returns the response and the ASINs it was made for; the cost model learns from it.
        ``domain`` is the marketplace of the ASINs (default ``keepa.domain``).
        """
        w = self.settings.worker
        domain = self.domain if domain is None else domain
        costs = self.costs if offers else self.light_costs
        shared_key = SHARED_COST_KEYS[offers]
        costs.consider(self.storage.get_state(shared_key))
        cap = max_cost = 0
        for _ in range(MAX_TOO_LARGE_RETRIES):
            cost = costs.estimate(len(asins))
            if cap:
                cost = min(cost, cap)

            def fn(batch: list[str] = asins) -> KeepaResponse:
                if before_call is not None:
                    before_call(batch)
                return self.keepa.product(
                    batch,
                    domain=domain,
                    stats=w.stats_days,
                    history=history,
                    offers=w.offers if offers else None,
                )

            try:
                resp = self.permits.call(cost, fn, priority=priority)
            except PermitRejected as exc:
                if exc.reason != RejectReason.TOO_LARGE or exc.max_cost <= 0:
                    raise
                max_cost = exc.max_cost
                n = costs.fit(len(asins), max_cost)
                if n < len(asins):
                    log.info(
                        "%s: %d tokens is more than the account can grant (%d): %d ASINs a call",
                        stage,
                        cost,
                        max_cost,
                        n,
                    )
                    on_shrink(asins[n:])
                    asins = asins[:n]
                else:
                    # Even one product is estimated above the cap: ask for the cap.
                    cap = max_cost
                continue
            if costs.observe(resp.envelope.tokens_consumed, len(products_of(resp))):
                self.storage.set_state(shared_key, costs.learned, self.clock())
            return resp, asins
        raise PermitRejected(RejectReason.TOO_LARGE, max_cost)


def products_of(resp: KeepaResponse) -> dict[str, dict[str, Any]]:
    """The products of a ``/product`` answer by ASIN. Unknown ASINs are absent, whether Keepa
    left them out or sent an INVALID product (``productType`` 4, read first): neither is
    found, and the cost model never counts one."""
    out: dict[str, dict[str, Any]] = {}
    for product in resp.payload.get("products") or []:
        if isinstance(product, dict) and isinstance(product.get("asin"), str):
            if product.get("productType") == PRODUCT_TYPE_INVALID:
                continue
            out[product["asin"].upper()] = product
    return out


@dataclass(frozen=True)
class Passed:
    """A product that passed every filter."""

    asin: str
    product: dict[str, Any]
    facts: Facts


def judge(
    asins: list[str], resp: KeepaResponse, filters: FilterSettings, *, prefix: str = ""
) -> tuple[list[Passed], list[Rejection]]:
    """Split the ASINs of a ``/product`` answer into those that pass the filters and
    rejections naming the filter that failed (``not_found`` when Keepa has no such
    product); ``prefix`` goes before each reason (refresh uses ``refresh:``). Prices are
    judged in ``filters.price_type``."""
    found = products_of(resp)
    passed: list[Passed] = []
    rejected: list[Rejection] = []
    for asin in asins:
        product = found.get(asin)
        if product is None:
            rejected.append(Rejection(asin, f"{prefix}not_found", "not_found", {}))
            continue
        if product.get("productType") == PRODUCT_TYPE_VARIATION_PARENT:
            # A variation parent has no offers or prices of its own: its own reason.
            reason = "variation_parent"
            rejected.append(Rejection(asin, f"{prefix}{reason}", reason, {"productType": 5}))
            continue
        product_facts = facts(product, getattr(filters, "price_type", PRICE_NEW))
        failure = check(product_facts, filters)
        if failure is None:
            passed.append(Passed(asin, product, product_facts))
        else:
            rejected.append(
                Rejection(asin, f"{prefix}{failure.filter}", failure.filter, failure.detail)
            )
    return passed, rejected


def deal_row(
    product: dict[str, Any],
    facts: Facts,
    fee_percent: float,
    *,
    with_history: bool,
    query: str = "",
) -> dict[str, Any]:
    """The ``deals`` row of a product that qualified (see ``common.storage_deals.DEAL_FIELDS``);
    ``query`` names the deal query that found it."""
    raw = {k: v for k, v in product.items() if k != "csv"}
    row: dict[str, Any] = {
        "asin": facts.asin,
        "title": facts.title,
        "price_type": facts.price_type,
        "current": facts.current,
        "avg90": facts.avg90,
        "drop_percent": facts.drop_percent,
        "sales_rank": facts.sales_rank,
        "offers": facts.offers,
        "profit": facts.profit(fee_percent),
        "raw": json.dumps(raw, separators=(",", ":")),
        "query": query,
    }
    if with_history and product.get("csv") is not None:
        row["history"] = json.dumps(product["csv"], separators=(",", ":"))
    return row


def aging(now: float, last_run: float | None) -> float:
    """The tie-breaking bonus of a stage that last ran at ``last_run``."""
    if last_run is None:
        return URGENCY_AGING
    return URGENCY_AGING * min(1.0, max(0.0, now - last_run) / AGING_S)


def default_owner() -> str:
    return f"{this_host()}:{os.getpid()}"


def state_key(query: Query) -> str:
    """The database key prefix of a query's watermark and last scan. The built-in query keeps
    the key the single-selection pipeline used, so an upgrade keeps its watermark."""
    if query.name == DEFAULT_QUERY_NAME:
        return f"deals:{query.domain}"
    return f"deals:{query.domain}:{query.name}"


def query_figures(ctx: Pipeline, now: float) -> dict[str, Any]:
    """Per query, for status and metrics: what it found, queued, spent, and its last scan.
    Read from the database, so any worker reports the fleet's figures."""
    totals = ctx.storage.query_totals()
    out: dict[str, Any] = {}
    for q in queries_of(ctx.settings):
        last = ctx.storage.get_state(f"{state_key(q)}:last_scan") or {}
        at = last.get("at")
        row: dict[str, Any] = {
            "domain": q.domain,
            "deals_live": totals.get(q.name, {}).get("deals_live", 0),
            "candidates_waiting": totals.get(q.name, {}).get("candidates_queued", 0),
        }
        for counter in (
            "deals_found",
            "candidates_queued",
            "tokens",
            "pages",
            "notify_sent",
            "notify_failed",
        ):
            row[counter] = int(ctx.storage.get_state(f"query:{q.name}:{counter}", 0) or 0)
        row["last_scan_age_s"] = round(max(0.0, now - float(at)), 1) if at else None
        row["feed_stale"] = last.get("feed_stale")
        row["newest_deal_age_s"] = last.get("newest_deal_age_s")
        out[q.name] = row
    return out
