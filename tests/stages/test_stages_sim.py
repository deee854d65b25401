"""The stages against the real simulator (in-process, no latency, a short refill period), a
real SQLite file and the fake permit client: call counts as the simulator saw them, the
watermark, the stale-feed warning, rejections with reasons, refresh drops, cost learning."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from stages.stage_support import FakePermits, make_settings

from common.keepa import KeepaClient
from common.storage import Storage
from sim import server  # our own module: an import error must fail, not skip
from workers.stages import build_stages, judge

KEY = "stage-tests-key"
D = 1
UNKNOWN = ["X000000001", "X000000002", "X000000003"]  # not in any simulated catalog


@pytest.fixture
def sim() -> Iterator[Any]:
    with server.SimServer(
        port=0, refill_rate=5000, refill_period_s=0.05, seed=3, latency_scale=0.0
    ) as s:
        yield s


class RecordingKeepa(KeepaClient):
    """The real client, remembering every /product call (ASINs, options) and /deal selection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.product_calls: list[dict[str, Any]] = []
        self.deal_calls: list[dict[str, Any]] = []

    def product(self, asins: Any, **kwargs: Any) -> Any:
        self.product_calls.append({"asins": list(asins), **kwargs})
        return super().product(self.product_calls[-1]["asins"], **kwargs)

    def deal(self, selection: Any) -> Any:
        self.deal_calls.append(dict(selection))
        return super().deal(selection)


@pytest.fixture
def keepa(sim: Any) -> Iterator[RecordingKeepa]:
    client = RecordingKeepa(sim.url, KEY, read_timeout_s=20)
    yield client
    client.close()


def stages(
    role: str, keepa: KeepaClient, permits: FakePermits, storage: Storage, **sections: Any
) -> Any:
    return build_stages(role, make_settings(**sections), keepa, permits, storage)


def calls(sim: Any) -> tuple[int, int]:
    state = sim.state(KEY)
    return state["deal_calls"], state["product_calls"]


def queue_from_feed(keepa: RecordingKeepa, storage: Storage, n_pages: int = 1) -> None:
    """Fill the candidate queue from the feed (one deals scan, stopped by a full queue)."""
    permits = FakePermits()
    (deals,) = stages("deals", keepa, permits, storage, worker={"ingest_batch": 15 * n_pages})
    deals.run_once(deals.ctx.clock())


# --- deals ----------------------------------------------------------------------------


def test_finder_pages_then_stops_at_the_watermark(
    sim: Any, keepa: RecordingKeepa, storage: Storage
) -> None:
    permits = FakePermits()
    # A full queue is 10 batches of 30 = 300 candidates: the first scan reads 2 pages, or 3
    # when new deals pushed some of page 0 onto page 1 meanwhile (the feed is live).
    (deals,) = stages("deals", keepa, permits, storage, worker={"ingest_batch": 30})
    pages = 0
    while deals.urgency(deals.ctx.clock()) > 0 and pages < 20:
        assert deals.run_once(deals.ctx.clock()) == 150
        pages += 1
    assert 2 <= pages <= 3 and calls(sim) == (pages, 0)
    assert [c["page"] for c in keepa.deal_calls] == list(range(pages))
    assert permits.granted == [5] * pages
    queued = storage.totals()["candidates_waiting"]
    assert 300 <= queued <= 150 * pages
    assert permits.reports[-1]["feed_stale"] is False
    assert permits.reports[-1]["newest_deal_age_s"] < 3600

    # Scanned just now, the queue is long: nothing to do. Forced, a scan reads one page and
    # stops at the watermark (only the deals of the last moments are new).
    assert deals.urgency(deals.ctx.clock()) == 0
    deals.run_once(deals.ctx.clock())
    assert calls(sim) == (pages + 1, 0) and keepa.deal_calls[-1]["page"] == 0
    assert storage.totals()["candidates_waiting"] - queued < 150
    assert deals.urgency(deals.ctx.clock()) == 0  # the scan is over


def test_stale_feed_is_warned_and_reported(
    sim: Any, keepa: RecordingKeepa, storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    stale_s = 2 * 86400
    requests.post(f"{sim.url}/_sim/feed", params={"stale_s": stale_s}, timeout=5).raise_for_status()
    permits = FakePermits()
    (deals,) = stages("deals", keepa, permits, storage, worker={"ingest_batch": 1})
    with caplog.at_level(logging.WARNING, logger="workers.stages.deals"):
        deals.run_once(deals.ctx.clock())
    assert [r for r in caplog.records if "stale" in r.getMessage()]
    info = permits.reports[-1]
    assert info["feed_stale"] is True
    assert info["newest_deal_age_s"] >= stale_s - 120


# --- ingest ---------------------------------------------------------------------------


def test_ingest_peeks_in_calls_of_20_commits_in_sub_batches_and_records_reasons(
    sim: Any, keepa: RecordingKeepa, storage: Storage
) -> None:
    queue_from_feed(keepa, storage)
    storage.add_candidates(D, UNKNOWN, source="test", now=0.0)  # oldest: claimed first
    permits = FakePermits()
    batch, commit = 40, 4
    worker = {"ingest_batch": batch, "commit_batch": commit, "peek_offers": True}
    (ingest,) = stages("ingest", keepa, permits, storage, worker=worker)
    deal_calls_before = calls(sim)[0]

    assert ingest.run_once(ingest.ctx.clock()) == batch

    peeks = [c for c in keepa.product_calls if c["history"] is False]
    commits = [c for c in keepa.product_calls if c["history"] is True]
    # keepa.max_asins_with_offers (20, Keepa's documented cap): 40 claimed, two peeks.
    assert [len(p["asins"]) for p in peeks] == [20, 20]
    assert set(UNKNOWN) <= {a for p in peeks for a in p["asins"]}
    assert all(p["offers"] == 20 and p["stats"] == 90 for p in peeks)
    # One full call per sub-batch of survivors: sim and client agree on the count.
    assert calls(sim) == (deal_calls_before, len(peeks) + len(commits))
    assert len(permits.settles) == len(peeks) + len(commits)
    survivors = [a for c in commits for a in c["asins"]]
    assert len(commits) == math.ceil(len(survivors) / commit)
    assert all(c["history"] is True and c["offers"] == 20 for c in commits)
    assert all(len(c["asins"]) == commit for c in commits[:-1])

    t = storage.totals()
    reasons = t["rejections_by_reason"]
    assert reasons["not_found"] == len(UNKNOWN)
    assert set(reasons) - {"not_found"}, "the filters rejected some of the feed's deals"
    assert set(reasons) <= {"not_found", "no_price", "sales_rank", "drop", "profit", "offers"}
    assert 1 <= t["deals_live"] <= len(survivors)
    assert t["deals_live"] + t["rejections"] == batch
    # Every rejection carries its figures; every deal has its price history.
    for reason, detail in storage.conn.execute("SELECT reason, detail FROM rejections"):
        if reason not in ("not_found", "no_price"):
            assert '"value"' in detail, (reason, detail)
    no_history = storage.conn.execute("SELECT count(*) FROM deals WHERE history IS NULL")
    assert no_history.fetchone()[0] == 0
    assert t["candidates_claimed"] == 0
    assert storage.integrity_check() == "ok"


def test_costs_learn_from_settles(sim: Any, keepa: RecordingKeepa, storage: Storage) -> None:
    queue_from_feed(keepa, storage)
    permits = FakePermits()
    worker = {"ingest_batch": 30, "peek_offers": True}
    (ingest,) = stages("ingest", keepa, permits, storage, worker=worker)
    assert ingest.ctx.costs.per_product == 5.0  # worker.cost_per_product
    consumed_before = sim.state(KEY)["tokens_consumed"]  # the deal scan
    ingest.run_once(ingest.ctx.clock())
    (peek_cost, peek_consumed), _, *commit_settles = permits.settles
    assert peek_cost == 240  # 20 (the offers cap) x 12: the most offers=20 can cost
    assert peek_consumed is not None and peek_consumed >= 5 * 20  # offers: 5 or 6 a page
    # Every feed ASIN is found; the expected cost is learned from what Keepa charged...
    assert commit_settles, "some deal survived the peek"
    assert ingest.ctx.costs.per_product >= peek_consumed / 20
    # ...but no permit is ever smaller than what its call cost: the account is never
    # overdrawn behind the broker's back.
    n = len(keepa.product_calls[2]["asins"])
    assert commit_settles[0][0] == math.ceil(max(12, ingest.ctx.costs.per_product) * n)
    assert all(consumed <= cost for cost, consumed in permits.settles if consumed is not None)
    spent = sim.state(KEY)["tokens_consumed"] - consumed_before
    assert spent == sum(c for _, c in permits.settles if c)


def test_batch_shrinks_to_what_the_account_can_grant(
    sim: Any, keepa: RecordingKeepa, storage: Storage
) -> None:
    queue_from_feed(keepa, storage)
    permits = FakePermits(grantable=60)
    worker = {"ingest_batch": 50, "peek_offers": True}
    (ingest,) = stages("ingest", keepa, permits, storage, worker=worker)
    waiting = storage.totals()["candidates_waiting"]
    ingest.run_once(ingest.ctx.clock())
    assert permits.rejected == [240]  # the first call of 20 (12 each)
    first = permits.granted[0]
    assert first <= 60
    assert sim.state(KEY)["product_calls"] >= 1
    # 5 ASINs (60 / 12) fit the first call, its other 15 went back to the queue; the other
    # 30 claimed went in calls of 5.
    t = storage.totals()
    assert t["candidates_claimed"] == 0
    assert waiting - t["candidates_waiting"] == 35
    # The next batch is sized from the known cap: no more rejections.
    ingest.run_once(ingest.ctx.clock())
    assert permits.rejected == [240]
    assert all(cost <= 60 for cost in permits.granted)


def test_the_stats_peek_costs_a_token_a_product_and_offers_are_bought_for_survivors(
    sim: Any, keepa: RecordingKeepa, storage: Storage
) -> None:
    queue_from_feed(keepa, storage, n_pages=3)
    permits = FakePermits()
    (ingest,) = stages("ingest", keepa, permits, storage, worker={"ingest_batch": 40})
    consumed_before = sim.state(KEY)["tokens_consumed"]
    assert ingest.run_once(ingest.ctx.clock()) == 40
    peek, *commits = keepa.product_calls
    assert len(peek["asins"]) == 40 and peek["offers"] is None and peek["history"] is False
    peek_cost, peek_consumed = permits.settles[0]
    assert peek_cost == 40 and peek_consumed == 40  # every feed ASIN found, 1 token each
    assert commits and all(c["offers"] == 20 and c["history"] is True for c in commits)
    survivors = sum(len(c["asins"]) for c in commits)
    spent = sim.state(KEY)["tokens_consumed"] - consumed_before
    assert spent == sum(c for _, c in permits.settles if c)
    # Offers were bought for the survivors alone: at most 12 tokens each (offers=20); the
    # offers peek would have paid at least 5 an ASIN for all 40 before any commit.
    assert spent - peek_consumed <= 12 * survivors


def test_the_stats_peek_judges_as_the_offers_peek_does(
    sim: Any, keepa: RecordingKeepa, storage: Storage
) -> None:
    """Same ASINs, same moment: the filters' verdicts without offers equal those with
    offers=20, so the cheap peek loses no deal the offers peek finds."""
    queue_from_feed(keepa, storage, n_pages=4)
    asins = [a for (a,) in storage.conn.execute("SELECT asin FROM candidates LIMIT 100")]
    assert len(asins) == 100
    filters = make_settings().filters
    stats_only = keepa.product(asins, stats=90, history=False, offers=None)
    verdicts = {}
    for start in range(0, len(asins), 20):
        part = asins[start : start + 20]
        with_offers = keepa.product(part, stats=90, history=False, offers=20)
        for kind, resp in (("stats", stats_only), ("offers", with_offers)):
            passed, rejected = judge(part, resp, filters)
            for p in passed:
                verdicts.setdefault(p.asin, {})[kind] = "deal"
            for r in rejected:
                verdicts.setdefault(r.asin, {})[kind] = r.reason
    differ = {a: v for a, v in verdicts.items() if v["stats"] != v["offers"]}
    assert not differ
    kinds = {v["stats"] for v in verdicts.values()}
    assert "deal" in kinds and len(kinds) >= 3, kinds  # the comparison judged something


# --- refresh --------------------------------------------------------------------------


def test_refresh_drops_deals_that_stopped_qualifying(
    sim: Any, keepa: RecordingKeepa, storage: Storage
) -> None:
    queue_from_feed(keepa, storage)
    permits = FakePermits()
    (ingest,) = stages("ingest", keepa, permits, storage, worker={"ingest_batch": 60})
    ingest.run_once(ingest.ctx.clock())
    ranks = sorted(r for (r,) in storage.conn.execute("SELECT sales_rank FROM deals"))
    assert len(ranks) >= 2, "the feed gave at least two deals"
    # Stricter settings now: half of the deals rank too low (the ranks are stable within
    # seconds, and a rank tie only keeps one more).
    limit = ranks[len(ranks) // 2 - 1]
    too_low = sum(1 for r in ranks if r > limit)
    worker = {"refresh_after_s": 0.0, "refresh_batch": 100}
    (refresh,) = stages(
        "refresh", keepa, permits, storage, worker=worker, filters={"max_sales_rank": limit}
    )
    now = refresh.ctx.clock()
    assert refresh.urgency(now) > 0
    products_before = calls(sim)[1]
    granted_before = len(permits.granted)

    assert refresh.run_once(now) == len(ranks)

    assert calls(sim)[1] == products_before + 1  # one light call
    assert permits.granted[granted_before:] == [len(ranks)]  # 1 token a product
    t = storage.totals()
    dropped = t["rejections_by_reason"].get("refresh:sales_rank", 0)
    assert dropped == too_low >= 1
    assert t["deals_live"] == len(ranks) - dropped and t["deals_dropped"] == dropped
    assert all(r <= limit for (r,) in storage.conn.execute("SELECT sales_rank FROM deals"))
    kept = storage.conn.execute("SELECT min(refreshes), min(updated_at) FROM deals").fetchone()
    assert kept[0] == 1 and kept[1] >= now
    assert t["deals_claimed"] == 0
