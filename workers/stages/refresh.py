"""Refresh: keep the live deals true.

One batch: claim up to ``worker.refresh_batch`` deals last updated more than
``worker.refresh_after_s`` ago, stalest first (fewer when the account cannot grant the cost),
update them with ONE light ``/product`` call, then rewrite those that still pass the filters
and drop the others: deleted, with a rejection ``refresh:<filter>`` (``refresh:not_found``
when Keepa no longer knows the ASIN). The price history stored at commit is kept.

The light call is ``stats=worker.stats_days``, ``history=0`` and *no* ``offers``: 1 token
per product instead of 6 or more. Every filter can still be checked: prices, averages and
the sales rank come from ``stats``, and the offer count from ``stats.current[COUNT_NEW]``,
which Keepa tracks without offers. Keepa's copy is refreshed automatically when it is older
than an hour, so the figures are at most an hour old — as fresh as the refresh period asks
for, and refresh stays cheap enough never to starve ingest.
"""

from __future__ import annotations

import logging

from workers.pipeline import (
    PRIORITY_REFRESH,
    PRIORITY_SPARE,
    URGENCY_BASE,
    URGENCY_NONE,
    URGENCY_SPAN,
    URGENCY_SPARE,
    Pipeline,
    aging,
    deal_row,
    judge,
)
from workers.stages.deals import query_domains, query_named

log = logging.getLogger(__name__)

NAME = "refresh"
# Overdue by this many refresh periods = the full backlog urgency.
FULL_URGENCY_PERIODS = 1.0
MIN_PERIOD_S = 60.0
# Use it or lose it: on tokens the next refill would lose to the cap, deals not due yet are
# refreshed early, stalest first — those last updated at least this share of
# ``worker.refresh_after_s`` ago (so the same deals are not refreshed over and over).
SPARE_MIN_AGE_FRACTION = 0.1


class RefreshStage:
    name = NAME

    def __init__(self, ctx: Pipeline) -> None:
        self.ctx = ctx
        self._in_hand: list[str] = []
        self._last_run: float | None = None
        self._domain = ctx.domain  # the domain of the batch in hand (deal queries: issue 19)
        self._spare = 0  # > 0: the next batch is early, on this many tokens the cap would drop
        self._priority = PRIORITY_REFRESH

    def _stalest(self, now: float) -> tuple[int, float | None]:
        best: tuple[int, float | None] = (self.ctx.domain, None)
        for domain in query_domains(self.ctx.settings):
            t = self.ctx.storage.stalest_claimable_deal(domain, now)
            if t is not None and (best[1] is None or t < best[1]):
                best = (domain, t)
        return best

    def urgency(self, now: float) -> float:
        self._spare = 0
        stalest = self._stalest(now)[1]
        if stalest is None:
            return URGENCY_NONE
        period = self.ctx.settings.worker.refresh_after_s
        overdue = now - (stalest + period)
        if overdue < 0:
            spend = self.ctx.settings.worker.spend_spare
            if spend and now - stalest >= SPARE_MIN_AGE_FRACTION * period:
                self._spare = self.ctx.permits.spare()
            return URGENCY_SPARE if self._spare > 0 else URGENCY_NONE
        backlog = min(1.0, overdue / (FULL_URGENCY_PERIODS * max(period, MIN_PERIOD_S)))
        return URGENCY_BASE + URGENCY_SPAN * backlog + aging(now, self._last_run)

    def run_once(self, now: float) -> int:
        ctx, w = self.ctx, self.ctx.settings.worker
        self._last_run = now
        size = ctx.light_costs.fit(w.refresh_batch, ctx.permits.max_cost())
        self._domain = self._stalest(now)[0]
        due_before = now - w.refresh_after_s
        spare, self._spare = self._spare, 0
        if spare > 0 and ctx.storage.stalest_claimable_deal(self._domain, now) is not None:
            # Early: no more than the tokens that would be lost, deals not refreshed lately.
            size = ctx.light_costs.fit(size, spare)
            due_before = now - SPARE_MIN_AGE_FRACTION * w.refresh_after_s
        self._priority = PRIORITY_SPARE if spare > 0 else PRIORITY_REFRESH
        claimed = ctx.storage.claim_stale_deals(
            self._domain,
            ctx.owner,
            size,
            now=now,
            due_before=due_before,
            ttl_s=w.claim_ttl_s,
        )
        if claimed and spare > 0:
            log.info(
                "refresh: %d deals early, on %d tokens the cap would drop", len(claimed), spare
            )
        if not claimed:
            return 0
        self._in_hand = list(claimed)
        try:
            done = self._process(claimed)
        except BaseException:
            self.give_back()
            raise
        self._in_hand = []
        ctx.report(ctx.clock(), last_stage=NAME)
        return done

    def _process(self, claimed: list[str]) -> int:
        ctx = self.ctx
        resp, batch = ctx.product_call(
            NAME,
            claimed,
            history=False,
            offers=False,
            on_shrink=self._give_back_unused,
            priority=self._priority,
            before_call=self._renew,
            domain=self._domain,
        )
        # Each deal is judged by the filters of the query that found it.
        found_by = ctx.storage.queries_of("deals", self._domain, batch)
        groups: dict[str, list[str]] = {}
        for asin in batch:
            groups.setdefault(found_by.get(asin, ""), []).append(asin)
        keep, drop = [], []
        for name, group in groups.items():
            f = query_named(ctx.settings, name).filters
            passed, dropped = judge(group, resp, f, prefix="refresh:")
            keep += [
                deal_row(p.product, p.facts, f.fee_percent, with_history=False, query=name)
                for p in passed
            ]
            drop += dropped
        now = ctx.clock()
        done = ctx.storage.refresh_deals(self._domain, keep, now)
        done += ctx.storage.drop_deals(self._domain, drop, now)
        self._in_hand = []
        ctx.permits.advance(NAME, done)
        log.log(
            logging.INFO if drop else logging.DEBUG,
            "refresh: %d deals kept, %d dropped",
            len(keep),
            len(drop),
        )
        return done

    def _renew(self, asins: list[str]) -> None:
        ctx = self.ctx
        ctx.storage.renew_claims(
            "deals",
            self._domain,
            ctx.owner,
            asins,
            now=ctx.clock(),
            ttl_s=ctx.settings.worker.claim_ttl_s,
        )

    def _give_back_unused(self, asins: list[str]) -> None:
        ctx = self.ctx
        ctx.storage.release_deals(self._domain, ctx.owner, asins)
        gone = set(asins)
        self._in_hand = [a for a in self._in_hand if a not in gone]

    def give_back(self) -> None:
        if not self._in_hand:
            return
        n = self.ctx.storage.release_deals(self._domain, self.ctx.owner, self._in_hand)
        log.info("gave back %d claimed deals", n)
        self._in_hand = []
