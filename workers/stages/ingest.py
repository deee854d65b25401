"""Ingest: turn queued candidates into deals or rejections.

One batch: claim up to ``worker.ingest_batch`` candidates (fewer when the account cannot
grant the cost of that many), *peek* them in one ``/product`` call with ``stats`` and no
offers — 1 token a product, and every filter input (NEW price and its 90-day average, sales
rank, the new-offer count) is in ``stats`` — reject those that fail a filter (or that Keepa
does not know: ``not_found``), then *commit* the survivors in sub-batches of
``worker.commit_batch``: one ``/product`` call each with the full data (price history and
``offers=worker.offers``), filters checked again on it, deals upserted. Offers (6-12 tokens
a product) are bought for survivors only. ``worker.peek_offers`` peeks with offers instead,
for filters that need offer data: then each peek call carries at most
``keepa.max_asins_with_offers`` ASINs (default 20, Keepa's documented cap with offers), each
under its own permit sized for its own ASINs.

Every candidate leaves the queue in the transaction that writes its deal or its rejection;
what is not done (SIGTERM between sub-batches, an error) is given back to the queue.

Deal queries (issue 19): a batch is of one domain (the one with the most candidates waiting
among the queries' domains), and each candidate is judged by the filters of the query that
found it (``candidates.query``; its ``filters.price_type`` says which prices). Each deal row
names its query, and a query with ``notify`` gets one webhook POST per new deal committed
(``workers.notify``: in the background, never delaying the batch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from common.errors import BrokerUnavailable, PermitRejected, PermitTimeout, StorageBlocked
from common.keepa import MAX_ASINS_PER_CALL
from workers.notify import notify_deals
from workers.pipeline import (
    PRIORITY_COMMIT,
    URGENCY_BASE,
    URGENCY_NONE,
    URGENCY_SPAN,
    Pipeline,
    aging,
    deal_row,
    judge,
)
from workers.stages.deals import query_domains, query_named

log = logging.getLogger(__name__)

NAME = "ingest"


class IngestStage:
    name = NAME

    def __init__(self, ctx: Pipeline) -> None:
        self.ctx = ctx
        self._in_hand: list[str] = []
        self._last_run: float | None = None
        self._domain = ctx.domain  # the domain of the batch in hand
        # Peeked (paid for) and not committed yet; kept across turns when the storage stops
        # taking writes (issue 12: workers.storage_gate), so the peek is not bought again.
        self._survivors: list[str] = []
        self._found_by: dict[str, str] = {}

    # --- scheduling ---------------------------------------------------------------------

    def _busiest_domain(self, now: float) -> tuple[int, int]:
        best = (self.ctx.domain, -1)
        for domain in query_domains(self.ctx.settings):
            n = self.ctx.storage.claimable_candidates(domain, now)
            if n > best[1]:
                best = (domain, n)
        return best

    def urgency(self, now: float) -> float:
        if self._survivors:
            return URGENCY_BASE + URGENCY_SPAN + aging(now, None)  # finish what was paid for
        waiting = self._busiest_domain(now)[1]
        if waiting <= 0:
            return URGENCY_NONE
        batch = self.ctx.settings.worker.ingest_batch
        backlog = min(1.0, waiting / (2.0 * batch))
        return URGENCY_BASE + URGENCY_SPAN * backlog + aging(now, self._last_run)

    # --- one batch ----------------------------------------------------------------------

    def run_once(self, now: float) -> int:
        ctx, w = self.ctx, self.ctx.settings.worker
        self._last_run = now
        if self._survivors:
            return self._guarded(self._resume)
        # Sized by what its peek costs (the commits are each permitted on their own).
        peek_costs = ctx.costs if w.peek_offers else ctx.light_costs
        size = peek_costs.fit(w.ingest_batch, ctx.permits.max_cost())
        self._domain = self._busiest_domain(now)[0]
        claimed = ctx.storage.claim_candidates(
            self._domain, ctx.owner, size, now=now, ttl_s=w.claim_ttl_s
        )
        if not claimed:
            return 0
        self._in_hand = list(claimed)
        return self._guarded(lambda: self._process(claimed))

    def _guarded(self, batch: Callable[[], int]) -> int:
        ctx = self.ctx
        try:
            done = batch()
        except StorageBlocked:
            # No permit while the storage fails: give back what was not peeked (if the
            # storage lets us; else the claims expire), keep the survivors for next time.
            keep = set(self._survivors)
            rest = [a for a in self._in_hand if a not in keep]
            self._in_hand = list(self._survivors)
            if rest:
                ctx.storage.release_candidates(self._domain, ctx.owner, rest, count_attempt=False)
            raise
        except (BrokerUnavailable, PermitTimeout, PermitRejected):
            # No permit: the candidates were not tried, so the attempt does not count.
            self._release(count_attempt=False)
            raise
        except BaseException:
            self._release(count_attempt=True)
            raise
        self._in_hand = []
        ctx.report(ctx.clock(), last_stage=NAME)
        return done

    def _judge(self, asins: list[str], resp: Any) -> tuple[list[Any], list[Any]]:
        """Each ASIN judged by the filters of the query that found it."""
        ctx = self.ctx
        found_by = ctx.storage.queries_of("candidates", self._domain, asins)
        groups: dict[str, list[str]] = {}
        for asin in asins:
            groups.setdefault(found_by.get(asin, ""), []).append(asin)
        passed: list[Any] = []
        rejected: list[Any] = []
        for name, group in groups.items():
            p, r = judge(group, resp, query_named(ctx.settings, name).filters)
            passed += p
            rejected += r
        self._found_by.update(found_by)
        return passed, rejected

    def _process(self, claimed: list[str]) -> int:
        ctx = self.ctx
        self._found_by = {}
        # The peek reads stats only (1 token a product: every filter input is in ``stats``)
        # unless ``worker.peek_offers``; offers are bought for the survivors' commit alone.
        peek_offers = ctx.settings.worker.peek_offers
        cap = (
            max(1, ctx.settings.keepa.max_asins_with_offers) if peek_offers else MAX_ASINS_PER_CALL
        )
        peek_costs = ctx.costs if peek_offers else ctx.light_costs
        self._survivors = []
        peeked = done = 0
        todo = list(claimed)
        while todo:
            # Each call: at most the documented cap, and no more than the largest permit pays
            # for (known after a "too_large" REJECT: later calls are sized from it).
            n = peek_costs.fit(cap, ctx.permits.max_cost())
            part, todo = todo[:n], todo[n:]
            if peeked and ctx.permits.stopping:
                rest = [*part, *todo]
                log.info("stopping: giving back %d candidates not peeked yet", len(rest))
                self._give_back_unused(rest)
                break
            resp, batch = ctx.product_call(
                NAME,
                part,
                history=False,
                offers=peek_offers,
                on_shrink=self._give_back_unused,
                before_call=self._renew,
                domain=self._domain,
            )
            passed, rejections = self._judge(batch, resp)
            self._survivors += [p.asin for p in passed]
            n_rejected = ctx.storage.reject_candidates(self._domain, rejections, ctx.clock())
            self._forget([r.asin for r in rejections])
            ctx.permits.advance(NAME, n_rejected)
            done += n_rejected
            peeked += len(batch)
        log.debug("peeked %d: %d rejected, %d to commit", peeked, done, len(self._survivors))
        committed, finished = self._commit_survivors()
        done += finished
        log.info(
            "ingest: %d candidates peeked, %d deals committed, %d rejected",
            peeked,
            committed,
            done - committed,
        )
        return done

    def _resume(self) -> int:
        """Commit the survivors of a batch the storage interrupted (their peek was paid)."""
        log.info("ingest: committing %d survivors of an interrupted batch", len(self._survivors))
        return self._commit_survivors()[1]

    def _commit_survivors(self) -> tuple[int, int]:
        """Commit ``self._survivors`` in sub-batches: (deals committed, items done)."""
        ctx = self.ctx
        cap = max(1, ctx.settings.keepa.max_asins_with_offers)
        step = max(1, min(ctx.settings.worker.commit_batch, cap))
        committed = done = 0
        while self._survivors:
            if ctx.permits.stopping:
                rest = list(self._survivors)
                log.info("stopping: giving back %d survivors not committed yet", len(rest))
                self._give_back_unused(rest)
                break
            deals, rejected = self._commit(self._survivors[:step])  # forgets its chunk
            committed += deals
            done += deals + rejected
        return committed, done

    def _commit(self, chunk: list[str]) -> tuple[int, int]:
        """One sub-batch of survivors with full data: (deals committed, rejected)."""
        ctx = self.ctx
        resp, chunk = ctx.product_call(
            NAME,
            chunk,
            history=True,
            offers=True,
            on_shrink=self._give_back_unused,
            before_call=self._renew,
            priority=PRIORITY_COMMIT,
            domain=self._domain,
        )
        passed, rejections = self._judge(chunk, resp)
        deals = []
        for p in passed:
            query = query_named(ctx.settings, self._found_by.get(p.asin, ""))
            deals.append(
                deal_row(
                    p.product,
                    p.facts,
                    query.filters.fee_percent,
                    with_history=True,
                    query=self._found_by.get(p.asin, ""),
                )
            )
        now = ctx.clock()
        committed = ctx.storage.commit_deals(self._domain, deals, now)
        rejected = ctx.storage.reject_candidates(self._domain, rejections, now)
        notify_deals(ctx, self._domain, deals)
        self._forget(chunk)
        ctx.permits.advance(NAME, committed + rejected)
        return committed, rejected

    # --- claims -------------------------------------------------------------------------

    def _renew(self, asins: list[str]) -> None:
        ctx = self.ctx
        ctx.storage.renew_claims(
            "candidates",
            self._domain,
            ctx.owner,
            self._in_hand or asins,
            now=ctx.clock(),
            ttl_s=ctx.settings.worker.claim_ttl_s,
        )

    def _give_back_unused(self, asins: list[str]) -> None:
        ctx = self.ctx
        ctx.storage.release_candidates(self._domain, ctx.owner, asins, count_attempt=False)
        self._forget(asins)

    def _forget(self, asins: list[str]) -> None:
        gone = set(asins)
        self._in_hand = [a for a in self._in_hand if a not in gone]
        self._survivors = [a for a in self._survivors if a not in gone]

    def give_back(self) -> None:
        self._release(count_attempt=True)

    def _release(self, *, count_attempt: bool) -> None:
        """Queue the candidates in hand again. A candidate whose attempts keep failing is
        rejected after ``common.storage.MAX_CLAIM_ATTEMPTS`` claims."""
        if not self._in_hand:
            return
        ctx = self.ctx
        n = ctx.storage.release_candidates(
            self._domain, ctx.owner, self._in_hand, count_attempt=count_attempt
        )
        # Not an attempt (no permit: a closed broker, storage held): not worth a line each.
        log.log(
            logging.INFO if count_attempt else logging.DEBUG, "gave back %d claimed candidates", n
        )
        self._in_hand = []
        self._survivors = []
