"""Deals: find candidate ASINs in Keepa's deal feed, one scanner per deal query.

Each query of the settings (``[[queries]]``, see ``common.queries``; without any, the built-in
one: NEW, week, newest first) has its own scanner, its own interval (``every_s``) and its own
stale-feed warning. The stage runs one ``/deal`` page (``DEAL_PAGE_COST`` tokens) of the most
urgent scanner per ``run_once``. The page's selection is the query's, as the user wrote it,
plus ``page`` (and ``domainId`` when the file did not name one).

How a scan goes depends on the query's ``sortType``:

- **1, newest first**: the watermark scan. Pages go down to the *watermark* (the newest deal
  an earlier scan of this query saw, kept in the database so that every worker and every
  restart shares it; one per query). It ends at the first deal the watermark already covers,
  or at a page of fewer than ``DEAL_PAGE_SIZE`` deals; only then does the watermark move, so a
  scan cut short by an error or a restart is redone, never skipped.
- **any other order** (best drop, best rank, ...): no order in time, so no watermark. Each
  interval the feed is read from the top, up to the query's ``page_limit`` pages, and every
  ASIN goes to ``add_candidates``, which queues only what is new: an ASIN already queued or a
  live deal is left alone, one rejected recently too (``seen`` keeps the record of each).

Either scan also ends early once the candidate queue of its domain holds
``FULL_QUEUE_BATCHES`` ingest batches. When the newest deal on a query's first page is older
than its ``stale_feed_s`` the feed has gone stale for that query: a warning is logged (once per
state change, repeated hourly) and status shows it per query.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from common.costs import DEAL_PAGE_COST
from common.queries import Query, queries_of
from workers.pipeline import PRIORITY_DEALS, URGENCY_NONE, Pipeline, state_key

if TYPE_CHECKING:
    from common.keepa import KeepaResponse

log = logging.getLogger(__name__)

NAME = "deals"
DEAL_PAGE_SIZE = 150
SORT_NEWEST_FIRST = 1
MAX_PAGES_PER_SCAN = 100  # a first watermark scan of a large feed stops here (15,000 deals)
# A scan also stops when this many ingest batches are waiting: the queue is full enough, and
# deals further down the feed are older (a first scan of a big feed would queue thousands).
FULL_QUEUE_BATCHES = 10
STALE_WARN_EVERY_S = 3600.0
KEEPA_EPOCH_MINUTES = 21_564_000  # Keepa time: minutes since 2011-01-01 UTC
ASIN_RE = re.compile(r"^[A-Z0-9]{10}$")
PRIORITY_TIE_BREAK = 0.001  # urgency added per point of a query's priority

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
    found: int = 0


class QueryScanner:
    """The scans of one query (the state of one work loop; shared state is in the DB)."""

    def __init__(self, ctx: Pipeline, query: Query) -> None:
        self.ctx = ctx
        self.query = query
        self.key = state_key(query)
        self.scan: Scan | None = None
        self.stale: bool | None = None
        self.newest_deal_age_s: float | None = None
        self._stale_warned_at: float | None = None

    def urgency(self, now: float) -> float:
        if self.scan is not None:
            return URGENCY_FINISH_SCAN
        ctx, q = self.ctx, self.query
        last = ctx.storage.get_state(f"{self.key}:last_scan") or {}
        waiting = ctx.storage.claimable_candidates(q.domain, now)
        due = now - float(last.get("at", 0.0)) >= q.every_s
        bonus = PRIORITY_TIE_BREAK * q.priority
        if not due:
            # A newest-first scan that found new deals is followed at once when ingest has
            # caught up: the interval is the pause when nothing is new. (A top-pages scan
            # would only read the same pages again.)
            if q.newest_first and waiting == 0 and int(last.get("queued", 0)) > 0:
                return URGENCY_QUEUE_DRY + bonus
            return URGENCY_NONE
        if waiting == 0:
            return URGENCY_QUEUE_DRY + bonus
        if waiting < 2 * ctx.settings.worker.ingest_batch:
            return URGENCY_DUE + bonus
        return URGENCY_DUE_QUEUE_LONG + bonus

    def run_page(self) -> int:
        ctx, q = self.ctx, self.query
        scan = self.scan or Scan()
        self.scan = scan
        selection = q.page_selection(scan.page)
        resp: KeepaResponse = ctx.permits.call(
            DEAL_PAGE_COST, lambda: ctx.keepa.deal(selection), priority=PRIORITY_DEALS
        )
        now = ctx.clock()
        ctx.storage.add_query_counter(q.name, "tokens", resp.envelope.tokens_consumed, now)
        ctx.storage.add_query_counter(q.name, "pages", 1, now)
        deals = _deal_list(resp.payload)
        if scan.page == 0:
            self._check_freshness(deals, now)
        if q.newest_first:
            new, reached_mark = self._past_watermark(scan, deals)
        else:
            new, reached_mark = self._all_asins(deals), False
        scan.found += len(new)
        queued = ctx.storage.add_candidates(
            q.domain,
            new,
            source="deal",
            now=now,
            requeue_rejected_after_s=ctx.settings.worker.refresh_after_s,
            query=q.name,
        )
        scan.queued += queued
        ctx.storage.add_query_counter(q.name, "deals_found", len(new), now)
        ctx.storage.add_query_counter(q.name, "candidates_queued", queued, now)
        ctx.permits.advance(NAME, len(deals))
        last_page = reached_mark or len(deals) < DEAL_PAGE_SIZE
        full = (
            ctx.storage.claimable_candidates(q.domain, now)
            >= FULL_QUEUE_BATCHES * ctx.settings.worker.ingest_batch
        )
        limit = MAX_PAGES_PER_SCAN if q.newest_first else q.page_limit
        if last_page or full or scan.page + 1 >= limit:
            if full and not last_page:
                log.info(
                    "query %s: deal scan stops at page %d: the candidate queue is full",
                    q.name,
                    scan.page,
                )
            self._finish(scan, now)
        else:
            scan.page += 1
        return len(deals)

    def _past_watermark(self, scan: Scan, deals: list[dict[str, Any]]) -> tuple[list[str], bool]:
        mark = self.ctx.storage.get_state(f"{self.key}:watermark") or {}
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
        return new, reached_mark

    @staticmethod
    def _all_asins(deals: list[dict[str, Any]]) -> list[str]:
        out = []
        for deal in deals:
            asin = str(deal.get("asin", "")).upper()
            if ASIN_RE.match(asin):
                out.append(asin)
            else:
                log.warning("deal feed: skipping a malformed deal %r", {"asin": asin})
        return out

    def _finish(self, scan: Scan, now: float) -> None:
        ctx, key = self.ctx, f"{self.key}:watermark"
        if self.query.newest_first:
            with ctx.storage.transaction():
                # Read again inside the write lock: another worker's scan may have moved it.
                # The watermark only moves forward; deals of the same minute join its ASINs.
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
            f"{self.key}:last_scan",
            {
                "at": now,
                "pages": scan.page + 1,
                "queued": scan.queued,
                "found": scan.found,
                "feed_stale": self.stale,
                "newest_deal_age_s": self.newest_deal_age_s,
            },
            now,
        )
        log.log(
            logging.INFO if scan.queued else logging.DEBUG,
            "query %s: deal scan: %d pages, %d deals past the mark, %d new candidates",
            self.query.name,
            scan.page + 1,
            scan.found,
            scan.queued,
        )
        self.scan = None

    def _check_freshness(self, deals: list[dict[str, Any]], now: float) -> None:
        q, limit = self.query, self.query.stale_feed_s
        minutes = [m for m in (_int(d.get("creationDate")) for d in deals) if m is not None]
        age = max(0.0, now - keepa_minutes_to_unix_s(max(minutes))) if minutes else None
        self.newest_deal_age_s = None if age is None else round(age, 1)
        # An empty first page counts as stale: there is no fresh deal to be had.
        self.stale = age is None or age > limit
        if not self.stale:
            if self._stale_warned_at is not None:
                log.info("query %s: deal feed fresh again: newest deal %.0f s old", q.name, age)
            self._stale_warned_at = None
            return
        if self._stale_warned_at is None or now - self._stale_warned_at >= STALE_WARN_EVERY_S:
            self._stale_warned_at = now
            hint = (
                "check the selection"
                if q.newest_first
                else f"its sortType {q.sort_type} does not put the newest deals first; "
                "sortType 1 does"
            )
            if age is not None:
                log.warning(
                    "query %s: deal feed is stale: the newest deal is %.1f h old (limit "
                    "%.1f h); %s",
                    q.name,
                    age / 3600,
                    limit / 3600,
                    hint,
                )
            else:
                log.warning("query %s: deal feed is empty: no deal on the first page", q.name)


class DealsStage:
    name = NAME

    def __init__(self, ctx: Pipeline) -> None:
        self.ctx = ctx
        self.scanners = [QueryScanner(ctx, q) for q in queries_of(ctx.settings)]

    # --- scheduling ---------------------------------------------------------------------

    def _pick(self, now: float) -> tuple[QueryScanner | None, float]:
        best, best_urgency = None, URGENCY_NONE
        for scanner in self.scanners:
            u = scanner.urgency(now)
            if u > best_urgency:
                best, best_urgency = scanner, u
        return best, best_urgency

    def urgency(self, now: float) -> float:
        return self._pick(now)[1]

    # --- one page -----------------------------------------------------------------------

    def run_once(self, now: float) -> int:
        scanner, _ = self._pick(now)
        if scanner is None:  # run when not urgent (a test, a direct call): the least recent
            scanner = min(
                self.scanners,
                key=lambda s: float(
                    (self.ctx.storage.get_state(f"{s.key}:last_scan") or {}).get("at", 0.0)
                ),
            )
        n = scanner.run_page()
        self._publish_feed()
        self.ctx.report(self.ctx.clock(), last_stage=NAME)
        return n

    def _publish_feed(self) -> None:
        """The fleet-wide feed figures: stale when any query's feed is."""
        seen = [s for s in self.scanners if s.stale is not None]
        if not seen:
            return
        self.ctx.feed.stale = any(s.stale for s in seen)
        ages = [s.newest_deal_age_s for s in seen if s.newest_deal_age_s is not None]
        self.ctx.feed.newest_deal_age_s = min(ages) if ages else None

    def give_back(self) -> None:
        # Nothing is claimed; a scan cut short is redone from page 0 (the watermark has not
        # moved), so forget it.
        for scanner in self.scanners:
            scanner.scan = None


def query_domains(settings: Any) -> list[int]:
    """The domains the pipeline works on: each query's, and ``keepa.domain`` (rows written
    before queries existed)."""
    return sorted({q.domain for q in queries_of(settings)} | {settings.keepa.domain})


def query_named(settings: Any, name: str) -> Query:
    """The query called ``name``; for a row of no known query (written before queries
    existed, or by a query since removed), the first query on the global filters."""
    queries = queries_of(settings)
    for q in queries:
        if q.name == name:
            return q
    return dataclasses.replace(queries[0], name=name, filters=settings.filters, notify="")


def _deal_list(payload: dict[str, Any]) -> list[dict[str, Any]]:
    deals = payload.get("deals")
    dr = deals.get("dr") if isinstance(deals, dict) else None
    return [d for d in dr if isinstance(d, dict)] if isinstance(dr, list) else []


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)
