"""Deals: find candidate ASINs in Keepa's deal feed.

A *scan* pages ``/deal`` newest first and queues the ASINs of deals newer than the
*watermark* (the newest deal an earlier scan saw, kept in the database so that every worker
and every restart shares it). It ends at the first deal the watermark already covers, or at a
page of fewer than ``DEAL_PAGE_SIZE`` deals; only then does the watermark move, so a scan cut
short by an error or a restart is redone, never skipped. One ``run_once`` is one page
(``DEAL_PAGE_COST`` tokens). A scan also ends early once the candidate queue holds
``FULL_QUEUE_BATCHES`` ingest batches: the older deals further down are then left out (a first
scan of a whole domain's feed would otherwise queue thousands).

The selection: ``sortType`` 1 (deal age, newest first — 4 is the percentage delta, not the
last update), ``priceTypes`` [1] (NEW: the price type the filters judge; it includes Amazon's
own offer when that is the cheapest new one), ``dateRange`` 1 (drops against the last week's
average: a steadier signal than the day's, closer to the 90-day filter).

When the newest deal of the feed is older than ``worker.stale_feed_s`` the feed has gone
stale: a warning is logged and status shows ``feed_stale``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from workers.costs import DEAL_PAGE_COST
from workers.stages import PRIORITY_DEALS, URGENCY_NONE, Pipeline

log = logging.getLogger(__name__)

NAME = "deals"
DEAL_PAGE_SIZE = 150
PRICE_TYPE = 1  # NEW
DATE_RANGE = 1  # week
SORT_NEWEST_FIRST = 1
MAX_PAGES_PER_SCAN = 100  # a first scan of a large feed stops here (15,000 deals)
# A scan also stops when this many ingest batches are waiting: the queue is full enough, and
# deals further down the feed are older (a first scan of a big feed would queue thousands).
FULL_QUEUE_BATCHES = 10
STALE_WARN_EVERY_S = 3600.0
KEEPA_EPOCH_MINUTES = 21_564_000  # Keepa time: minutes since 2011-01-01 UTC
ASIN_RE = re.compile(r"^[A-Z0-9]{10}$")

# Urgencies (see workers.stages: ingest and refresh run between 1 and 3.5).
URGENCY_FINISH_SCAN = 4.0  # a scan in progress: finish it before the watermark ages
URGENCY_QUEUE_DRY = 3.0  # due and nothing left for ingest
URGENCY_DUE = 2.0  # due, the queue is short
URGENCY_DUE_QUEUE_LONG = 0.5  # due, but ingest has plenty to do


def keepa_minutes_to_unix_s(minutes: int) -> float:
    return (minutes + KEEPA_EPOCH_MINUTES) * 60.0


@dataclass
class Scan:
    """A scan in progress: the next page and the newest deal seen so far."""

    page: int = 0
    newest: int = -1  # Keepa minutes
    newest_asins: set[str] = field(default_factory=set)
    queued: int = 0


class DealsStage:
    name = NAME

    def __init__(self, ctx: Pipeline) -> None:
        self.ctx = ctx
        self._scan: Scan | None = None
        self._stale_warned_at: float | None = None

    @property
    def _key(self) -> str:
        return f"deals:{self.ctx.domain}"

    # --- scheduling ---------------------------------------------------------------------

    def urgency(self, now: float) -> float:
        if self._scan is not None:
            return URGENCY_FINISH_SCAN
        ctx, w = self.ctx, self.ctx.settings.worker
        last = ctx.storage.get_state(f"{self._key}:last_scan") or {}
        waiting = ctx.storage.claimable_candidates(ctx.domain, now)
        due = now - float(last.get("at", 0.0)) >= w.deals_interval_s
        if not due:
            # A scan that found new deals is followed at once when ingest has caught up: the
            # interval is the pause when nothing is new.
            if waiting == 0 and int(last.get("queued", 0)) > 0:
                return URGENCY_QUEUE_DRY
            return URGENCY_NONE
        if waiting == 0:
            return URGENCY_QUEUE_DRY
        if waiting < 2 * w.ingest_batch:
            return URGENCY_DUE
        return URGENCY_DUE_QUEUE_LONG

    # --- one page -----------------------------------------------------------------------

    def run_once(self, now: float) -> int:
        ctx = self.ctx
        scan = self._scan or Scan()
        self._scan = scan
        selection = {
            "page": scan.page,
            "domainId": ctx.domain,
            "priceTypes": [PRICE_TYPE],
            "dateRange": DATE_RANGE,
            "sortType": SORT_NEWEST_FIRST,
        }
        resp = ctx.permits.call(
            DEAL_PAGE_COST, lambda: ctx.keepa.deal(selection), priority=PRIORITY_DEALS
        )
        now = ctx.clock()
        deals = _deal_list(resp.payload)
        if scan.page == 0:
            self._check_freshness(deals, now)
        mark = ctx.storage.get_state(f"{self._key}:watermark") or {}
        mark_minute = int(mark.get("creation", -1))
        mark_asins = set(mark.get("asins", []))
        new: list[str] = []
        reached_mark = False
        for deal in deals:
            asin = str(deal.get("asin", "")).upper()
            created = _int(deal.get("creationDate"))
            if not ASIN_RE.match(asin) or created is None:
                log.warning("deal feed: skipping a malformed deal %r", {"asin": asin})
                continue
            if created > scan.newest:
                scan.newest, scan.newest_asins = created, {asin}
            elif created == scan.newest:
                scan.newest_asins.add(asin)
            if created < mark_minute or (created == mark_minute and asin in mark_asins):
                reached_mark = True
                continue
            new.append(asin)
        queued = ctx.storage.add_candidates(
            ctx.domain,
            new,
            source="deal",
            now=now,
            requeue_rejected_after_s=ctx.settings.worker.refresh_after_s,
        )
        scan.queued += queued
        ctx.permits.advance(NAME, len(deals))
        last_page = reached_mark or len(deals) < DEAL_PAGE_SIZE
        full = (
            ctx.storage.claimable_candidates(ctx.domain, now)
            >= FULL_QUEUE_BATCHES * ctx.settings.worker.ingest_batch
        )
        if last_page or full or scan.page + 1 >= MAX_PAGES_PER_SCAN:
            if full and not last_page:
                log.info("deal scan stops at page %d: the candidate queue is full", scan.page)
            self._finish(scan, now)
        else:
            scan.page += 1
        ctx.report(now, last_stage=NAME)
        return len(deals)

    def _finish(self, scan: Scan, now: float) -> None:
        ctx, key = self.ctx, f"{self._key}:watermark"
        with ctx.storage.transaction():
            # Read again inside the write lock: another worker's scan may have moved it. The
            # watermark only moves forward; deals of the same minute join its ASINs.
            mark = ctx.storage.get_state(key) or {}
            minute = int(mark.get("creation", -1))
            if scan.newest > minute:
                ctx.storage.set_state(
                    key, {"creation": scan.newest, "asins": sorted(scan.newest_asins)}, now
                )
            elif scan.newest == minute and not scan.newest_asins <= set(mark.get("asins", [])):
                asins = sorted(scan.newest_asins | set(mark.get("asins", [])))
                ctx.storage.set_state(key, {"creation": minute, "asins": asins}, now)
        ctx.storage.set_state(
            f"{self._key}:last_scan",
            {"at": now, "pages": scan.page + 1, "queued": scan.queued},
            now,
        )
        log.log(
            logging.INFO if scan.queued else logging.DEBUG,
            "deal scan: %d pages, %d new candidates",
            scan.page + 1,
            scan.queued,
        )
        self._scan = None

    def _check_freshness(self, deals: list[dict[str, Any]], now: float) -> None:
        ctx, limit = self.ctx, self.ctx.settings.worker.stale_feed_s
        minutes = [m for m in (_int(d.get("creationDate")) for d in deals) if m is not None]
        age = max(0.0, now - keepa_minutes_to_unix_s(max(minutes))) if minutes else None
        ctx.feed.newest_deal_age_s = None if age is None else round(age, 1)
        # An empty first page counts as stale: there is no fresh deal to be had.
        ctx.feed.stale = age is None or age > limit
        if not ctx.feed.stale:
            if self._stale_warned_at is not None:
                log.info("deal feed fresh again: the newest deal is %.0f s old", age)
            self._stale_warned_at = None
            return
        if self._stale_warned_at is None or now - self._stale_warned_at >= STALE_WARN_EVERY_S:
            self._stale_warned_at = now
            if age is not None:
                log.warning(
                    "deal feed is stale: the newest deal is %.1f h old (limit %.1f h); check "
                    "the selection (sortType must be 1, newest first)",
                    age / 3600,
                    limit / 3600,
                )
            else:
                log.warning("deal feed is empty: no deal on the first page")

    def give_back(self) -> None:
        # Nothing is claimed; a scan cut short is redone from page 0 (the watermark has not
        # moved), so forget it.
        self._scan = None


def _deal_list(payload: dict[str, Any]) -> list[dict[str, Any]]:
    deals = payload.get("deals")
    dr = deals.get("dr") if isinstance(deals, dict) else None
    return [d for d in dr if isinstance(d, dict)] if isinstance(dr, list) else []


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)
