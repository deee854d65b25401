"""The stages one batch at a time against a fake Keepa client with a fixed catalog and a fake
clock: exact call counts, batch sizing under max_cost, SIGTERM between sub-batches, errors."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from stages.stage_support import (
    Clock,
    FakeKeepa,
    FakePermits,
    keepa_minute,
    make_settings,
    product,
)

from common.errors import BrokerUnavailable, KeepaServerError
from common.storage import MAX_CLAIM_ATTEMPTS, Storage
from workers.pipeline import PRIORITY_SPARE, URGENCY_SPARE
from workers.stages import build_stages
from workers.stages.deals import Scan

T0 = 1_700_000_000.0
D = 1


def asin(i: int) -> str:
    return f"B{i:09d}"


def stage(
    role: str,
    storage: Storage,
    keepa: FakeKeepa,
    permits: FakePermits,
    clock: Clock,
    **sections: dict[str, Any],
) -> Any:
    (s,) = build_stages(role, make_settings(**sections), keepa, permits, storage, clock=clock)  # type: ignore[arg-type]
    return s


def mixed_catalog() -> tuple[dict[str, dict[str, Any]], list[str], dict[str, str]]:
    """5 good products, 4 failing one filter each, 3 unknown ASINs (12 candidates)."""
    good = [asin(i) for i in range(5)]
    bad = {
        asin(10): "sales_rank",
        asin(11): "drop",
        asin(12): "profit",
        asin(13): "offers",
    }
    products = {a: product(a) for a in good}
    products[asin(10)] = product(asin(10), rank=900_000)
    products[asin(11)] = product(asin(11), current=1900)
    products[asin(12)] = product(asin(12), current=1500, avg90=1800)  # drop 16.7 %, profit 30
    products[asin(13)] = product(asin(13), offers=99)
    unknown = {asin(20): "not_found", asin(21): "not_found", asin(22): "not_found"}
    return products, good, {**bad, **unknown}


def rejections(storage: Storage) -> dict[str, str]:
    return dict(storage.conn.execute("SELECT asin, reason FROM rejections").fetchall())


# --- ingest ---------------------------------------------------------------------------


def test_ingest_peeks_once_and_commits_in_sub_batches(storage: Storage) -> None:
    products, good, bad = mixed_catalog()
    keepa, permits, clock = FakeKeepa(products), FakePermits(), Clock(T0)
    storage.add_candidates(D, [*good, *bad], source="test", now=T0)
    ingest = stage("ingest", storage, keepa, permits, clock, worker={"commit_batch": 2})
    assert ingest.urgency(T0) > 0

    done = ingest.run_once(T0)

    assert done == 12
    peek, *commits = keepa.product_calls
    assert sorted(peek["asins"]) == sorted([*good, *bad])
    # The peek reads stats only (no offers: 1 token a product); offers are bought for the
    # survivors' commit alone.
    assert peek["history"] is False and peek["offers"] is None and peek["stats"] == 90
    assert [len(c["asins"]) for c in commits] == [2, 2, 1]
    assert all(c["history"] is True and c["offers"] == 20 for c in commits)
    assert sorted(a for c in commits for a in c["asins"]) == sorted(good)
    # Rejections name their filter; the deals hold the full data.
    assert rejections(storage) == bad
    detail = storage.conn.execute(
        "SELECT detail FROM rejections WHERE asin = ?", (asin(10),)
    ).fetchone()[0]
    assert '"value": 900000' in detail and '"max": 200000' in detail
    deal = storage.get_deal(D, good[0])
    assert deal is not None and deal["history"] == "[[1,1000]]" and deal["profit"] == 700
    t = storage.totals(T0)
    assert t["deals_live"] == 5 and t["candidates_waiting"] == 0 and t["candidates_claimed"] == 0
    # Permits reserve the most the call may cost: 1 per ASIN for the peek, 12 per ASIN with
    # offers=20 (2 pages of 6), although the expected cost (5, then 6 learned) is lower.
    assert permits.granted[0] == 12
    assert permits.granted[1:] == [24, 24, 12]
    # Committing what was peeked outranks a new peek at the broker.
    assert permits.priorities[0] < permits.priorities[1] == permits.priorities[-1]
    assert sum(n for st, n in permits.advances if st == "ingest") == 12
    assert permits.reports and permits.reports[-1]["pipeline"]["deals_live"] == 5
    assert ingest.urgency(T0) == 0
    assert ingest.run_once(T0) == 0  # nothing left: no call
    assert len(keepa.product_calls) == 4


def test_peek_offers_peeks_with_offers_in_calls_of_the_documented_cap(
    storage: Storage,
) -> None:
    # worker.peek_offers: for filters that need offer data, at 12 tokens an ASIN.
    asins = [asin(i) for i in range(50)]
    keepa = FakeKeepa({a: product(a, current=1900) for a in asins})  # all fail "drop"
    permits, clock = FakePermits(), Clock(T0)
    storage.add_candidates(D, asins, source="test", now=T0)
    ingest = stage("ingest", storage, keepa, permits, clock, worker={"peek_offers": True})
    assert ingest.run_once(T0) == 50
    assert [len(c["asins"]) for c in keepa.product_calls] == [20, 20, 10]
    assert all(c["offers"] == 20 and c["history"] is False for c in keepa.product_calls)
    assert permits.granted == [240, 240, 120]


def test_the_stats_peek_is_one_call_at_a_token_an_asin(storage: Storage) -> None:
    asins = [asin(i) for i in range(60)]
    keepa = FakeKeepa({a: product(a, current=1900) for a in asins})  # all fail "drop"
    permits, clock = FakePermits(known_max_cost=120), Clock(T0)
    storage.add_candidates(D, asins, source="test", now=T0)
    ingest = stage("ingest", storage, keepa, permits, clock)
    assert ingest.run_once(T0) == 50  # worker.ingest_batch, in one call of 50 tokens
    assert [len(c["asins"]) for c in keepa.product_calls] == [50]
    assert keepa.product_calls[0]["offers"] is None and permits.requests == [50]


def test_batch_size_respects_a_known_max_cost(storage: Storage) -> None:
    asins = [asin(i) for i in range(60)]
    keepa = FakeKeepa({a: product(a, current=1900) for a in asins})  # all fail "drop"
    permits, clock = FakePermits(known_max_cost=120), Clock(T0)
    storage.add_candidates(D, asins, source="test", now=T0)
    ingest = stage("ingest", storage, keepa, permits, clock, worker={"peek_offers": True})
    assert ingest.run_once(T0) == 10  # floor(120 / 12): the permit covers the worst case
    assert permits.requests == [120] and not permits.rejected
    assert ingest.run_once(T0) == 10
    assert permits.requests[-1] == 120


def test_too_large_shrinks_the_batch_and_gives_the_rest_back(storage: Storage) -> None:
    asins = [asin(i) for i in range(60)]
    keepa = FakeKeepa({a: product(a, current=1900) for a in asins})
    permits, clock = FakePermits(grantable=100), Clock(T0)
    storage.add_candidates(D, asins, source="test", now=T0)
    ingest = stage("ingest", storage, keepa, permits, clock, worker={"peek_offers": True})

    # 50 claimed; the first call of 20 (keepa.max_asins_with_offers, 240 tokens) is rejected,
    # 8 fit in 100: the 12 cut off go back, the other 30 go in calls of 8 (no second REJECT).
    assert ingest.run_once(T0) == 38
    assert permits.rejected == [240]
    assert permits.granted == [96, 96, 96, 96, 72]
    assert [len(c["asins"]) for c in keepa.product_calls] == [8, 8, 8, 8, 6]
    # The 12 cut off are claimable again at once, their attempt not counted.
    assert storage.claimable_candidates(D, T0) == 22
    assert storage.conn.execute("SELECT max(attempts) FROM candidates").fetchone()[0] == 0
    # The next batch is sized from the cap the REJECT told: no second rejection.
    assert ingest.run_once(T0) == 8  # floor(100 / 12)
    assert permits.rejected == [240]


def test_stopping_between_sub_batches_gives_back_the_rest(storage: Storage) -> None:
    asins = [asin(i) for i in range(10)]
    keepa = FakeKeepa({a: product(a) for a in asins})
    permits, clock = FakePermits(), Clock(T0)
    permits.stop_after_calls = 2  # SIGTERM arrives during the first commit call
    storage.add_candidates(D, asins, source="test", now=T0)
    ingest = stage("ingest", storage, keepa, permits, clock)

    assert ingest.run_once(T0) == 5
    assert len(keepa.product_calls) == 2
    t = storage.totals(T0)
    assert t["deals_live"] == 5 and t["candidates_waiting"] == 5 and t["candidates_claimed"] == 0
    ingest.give_back()  # nothing left in hand: a no-op
    assert storage.totals(T0)["candidates_waiting"] == 5


def test_an_error_gives_back_what_was_not_done(storage: Storage) -> None:
    products, good, bad = mixed_catalog()
    keepa, permits, clock = FakeKeepa(products), FakePermits(), Clock(T0)
    keepa.fail_product_call = 2  # the second commit sub-batch
    storage.add_candidates(D, [*good, *bad], source="test", now=T0)
    ingest = stage("ingest", storage, keepa, permits, clock, worker={"commit_batch": 2})

    with pytest.raises(KeepaServerError):
        ingest.run_once(T0)
    t = storage.totals(T0)
    # Peek rejections and the first sub-batch are kept; the other 3 survivors are queued.
    assert t["rejections"] == 7 and t["deals_live"] == 2
    assert t["candidates_waiting"] == 3 and t["candidates_claimed"] == 0
    assert ingest.run_once(T0 + 1) == 3
    assert storage.totals(T0)["deals_live"] == 5


# --- refresh --------------------------------------------------------------------------


def test_refresh_rewrites_or_drops_deals(storage: Storage) -> None:
    asins = [asin(i) for i in range(6)]
    keepa = FakeKeepa({a: product(a, rank=1000 * (i + 1)) for i, a in enumerate(asins)})
    permits, clock = FakePermits(), Clock(T0)
    storage.add_candidates(D, asins, source="test", now=T0)
    ingest = stage("ingest", storage, keepa, permits, clock)
    assert ingest.run_once(T0) == 6

    refresh_after = 600.0
    worker = {"refresh_after_s": refresh_after, "refresh_batch": 4}
    # Stricter settings now: ranks above 3000 no longer qualify; one ASIN vanished.
    del keepa.products[asins[0]]
    keepa.products[asins[1]]["stats"]["current"][1] = 800  # the price moved
    refresh = stage(
        "refresh",
        storage,
        keepa,
        permits,
        clock,
        worker=worker,
        filters={"max_sales_rank": 3000},
    )
    assert refresh.urgency(T0 + 10) == 0  # nothing due yet
    later = T0 + refresh_after + 1
    clock.now = later
    assert refresh.urgency(later) > 0
    calls_before = len(keepa.product_calls)

    assert refresh.run_once(later) == 4  # the 4 stalest (all equal: by ASIN)
    call = keepa.product_calls[calls_before]
    # The light call: stats, no history, no offers (1 token a product).
    assert call["history"] is False and call["offers"] is None and call["stats"] == 90
    assert len(call["asins"]) == 4 and permits.granted[-1] == 4
    assert rejections(storage) == {asins[0]: "refresh:not_found", asins[3]: "refresh:sales_rank"}
    kept = storage.get_deal(D, asins[1])
    assert kept is not None and kept["current"] == 800 and kept["updated_at"] == later
    assert kept["history"] == "[[1,1000]]"  # the history from the commit stays
    assert kept["refreshes"] == 1 and kept["first_seen"] == T0

    assert refresh.run_once(later) == 2
    assert rejections(storage)[asins[4]] == "refresh:sales_rank"
    t = storage.totals(later)
    assert t["deals_live"] == 2 and t["deals_dropped"] == 4 and t["deals_claimed"] == 0
    assert refresh.urgency(later) == 0


def test_tokens_the_cap_would_drop_refresh_deals_early(storage: Storage) -> None:
    """Use it or lose it: deals not due yet are refreshed on the broker's spare tokens, the
    stalest first, no more than the spare pays for, after all other work (lowest priority)."""
    asins = [asin(i) for i in range(6)]
    keepa = FakeKeepa({a: product(a) for a in asins})
    permits, clock = FakePermits(), Clock(T0)
    storage.add_candidates(D, asins, source="test", now=T0)
    assert stage("ingest", storage, keepa, permits, clock).run_once(T0) == 6
    worker = {"refresh_after_s": 600.0, "refresh_batch": 50}
    refresh = stage("refresh", storage, keepa, permits, clock, worker=worker)

    later = T0 + 120  # not due (600 s), but older than a tenth of the period
    clock.now = later
    assert refresh.urgency(later) == 0  # no spare: nothing to do
    permits.spare_tokens = 4
    assert refresh.urgency(later) == URGENCY_SPARE
    calls_before = len(keepa.product_calls)
    assert refresh.run_once(later) == 4  # the spare pays for 4 (1 token each)
    assert len(keepa.product_calls) == calls_before + 1
    assert permits.granted[-1] == 4 and permits.priorities[-1] == PRIORITY_SPARE
    assert storage.totals(later)["deals_live"] == 6  # refreshed, still deals
    # Just refreshed: not again; the two left still are.
    assert refresh.urgency(later) == URGENCY_SPARE
    assert refresh.run_once(later) == 2
    assert refresh.urgency(later) == 0  # every deal updated just now
    # Too recent for an early refresh: a deal updated 30 s ago waits (a tenth of 600 is 60).
    clock.now = later + 30
    assert refresh.urgency(later + 30) == 0
    # worker.spend_spare off: deals wait until they are due.
    off = stage("refresh", storage, keepa, permits, clock, worker={**worker, "spend_spare": False})
    clock.now = later + 200
    assert refresh.urgency(later + 200) == URGENCY_SPARE
    assert off.urgency(later + 200) == 0


def test_refresh_and_ingest_urgencies_stay_balanced(storage: Storage) -> None:
    asins = [asin(i) for i in range(200)]
    keepa = FakeKeepa({a: product(a) for a in asins})
    permits, clock = FakePermits(), Clock(T0)
    storage.add_candidates(D, asins[:50], source="test", now=T0)
    settings = {"worker": {"refresh_after_s": 600.0}}
    stages = build_stages("all", make_settings(**settings), keepa, permits, storage, clock=clock)  # type: ignore[arg-type]
    by_name = {s.name: s for s in stages}
    by_name["ingest"].run_once(T0)
    storage.add_candidates(D, asins[50:], source="test", now=T0)
    clock.now = now = T0 + 5000  # deals far overdue, a long queue: both want to run
    ran: list[str] = []
    for _ in range(8):
        work = [s for s in stages if s.name != "deals"]
        best = max(work, key=lambda s: s.urgency(now))
        if best.urgency(now) <= 0:
            break
        best.run_once(now)
        ran.append(best.name)
        now += 30
        clock.now = now
    assert "ingest" in ran and "refresh" in ran, ran


# --- deals ----------------------------------------------------------------------------


def feed(n: int, newest_minute: int, start: int = 0) -> list[dict[str, Any]]:
    """n deals, newest first, one a minute."""
    return [
        {"asin": asin(start + i), "creationDate": newest_minute - i, "lastUpdate": newest_minute}
        for i in range(n)
    ]


def test_deals_scan_stops_at_the_watermark(storage: Storage) -> None:
    now = T0
    keepa = FakeKeepa(deals=feed(400, keepa_minute(now)))
    permits, clock = FakePermits(), Clock(now)
    deals = stage("deals", storage, keepa, permits, clock)
    assert deals.urgency(now) > 0

    pages = 0
    while deals.urgency(now) > 0 and pages < 10:
        deals.run_once(now)
        pages += 1
    assert pages == 3  # 150 + 150 + 100 (a short page ends the scan)
    sel = keepa.deal_calls[0]
    assert sel == {"page": 0, "domainId": 1, "priceTypes": [1], "dateRange": 1, "sortType": 1}
    assert [c["page"] for c in keepa.deal_calls] == [0, 1, 2]
    assert permits.granted == [5, 5, 5]
    assert storage.totals(now)["candidates_waiting"] == 400
    assert permits.reports[-1]["feed_stale"] is False

    # Ten newer deals arrive: the next scan reads one page and stops at the watermark.
    later = now + 3600
    clock.now = later
    keepa.deals = feed(10, keepa_minute(later), start=1000) + keepa.deals
    assert deals.urgency(later) > 0  # deals_interval_s passed
    deals.run_once(later)
    assert len(keepa.deal_calls) == 4 and keepa.deal_calls[-1]["page"] == 0
    assert storage.totals(later)["candidates_waiting"] == 410
    assert deals.urgency(later) == 0  # queue long, scanned just now: wait


def test_deals_scan_walks_pages_until_the_watermark(storage: Storage) -> None:
    now = T0
    keepa = FakeKeepa(deals=feed(200, keepa_minute(now)))
    permits, clock = FakePermits(), Clock(now)
    deals = stage("deals", storage, keepa, permits, clock)
    deals.run_once(now)
    deals.run_once(now)
    assert storage.totals(now)["candidates_waiting"] == 200
    later = now + 4 * 3600  # the 160 new deals, one a minute, are all newer than the mark
    clock.now = later
    keepa.deals = feed(160, keepa_minute(later), start=5000) + keepa.deals  # 160 new: 2 pages
    deals.run_once(later)
    assert deals.urgency(later) > 0  # mid-scan
    deals.run_once(later)
    assert deals.urgency(later) == 0
    assert [c["page"] for c in keepa.deal_calls] == [0, 1, 0, 1]
    assert storage.totals(later)["candidates_waiting"] == 360


def test_a_stale_feed_is_reported_and_warned(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    now = T0
    two_days_ago = keepa_minute(now - 2 * 86400)
    keepa = FakeKeepa(deals=feed(20, two_days_ago))
    permits, clock = FakePermits(), Clock(now)
    deals = stage("deals", storage, keepa, permits, clock)
    with caplog.at_level(logging.WARNING, logger="workers.stages.deals"):
        deals.run_once(now)
    assert any("stale" in r.getMessage() for r in caplog.records)
    info = permits.reports[-1]
    assert info["feed_stale"] is True
    assert info["newest_deal_age_s"] >= 2 * 86400 - 60
    assert info["pipeline"]["candidates_waiting"] == 20


def test_build_stages_roles(storage: Storage) -> None:
    keepa, permits = FakeKeepa(), FakePermits()
    settings = make_settings()
    names = [s.name for s in build_stages("all", settings, keepa, permits, storage)]  # type: ignore[arg-type]
    assert names == ["deals", "ingest", "refresh"]
    for role in ("deals", "ingest", "refresh"):
        (only,) = build_stages(role, settings, keepa, permits, storage)  # type: ignore[arg-type]
        assert only.name == role
    with pytest.raises(ValueError, match="unknown role"):
        build_stages("nope", settings, keepa, permits, storage)  # type: ignore[arg-type]


def test_watermark_merges_a_minute_and_never_moves_back(storage: Storage) -> None:
    now = T0
    minute = keepa_minute(now)
    keepa = FakeKeepa(deals=feed(5, minute))
    clock = Clock(now)
    a = stage("deals", storage, keepa, FakePermits(), clock)
    b = stage("deals", storage, keepa, FakePermits(), clock)  # a second worker
    a.run_once(now)
    assert storage.totals(now)["candidates_waiting"] == 5
    # A new deal in the same minute as the watermark: queued, and the minute's ASINs merged.
    keepa.deals = [{"asin": asin(99), "creationDate": minute}, *keepa.deals]
    b.run_once(now)
    assert storage.totals(now)["candidates_waiting"] == 6
    mark = storage.get_state("deals:1:watermark")
    assert mark["creation"] == minute and set(mark["asins"]) == {asin(0), asin(99)}
    claimed = storage.claim_candidates(D, "w", 10, now=now, ttl_s=60)
    storage.commit_deals(D, [{"asin": x} for x in claimed], now)
    a.run_once(now)
    assert storage.totals(now)["candidates_waiting"] == 0  # nothing new: nothing queued
    # Another worker's scan moved the watermark further while this scan was finishing: the
    # watermark does not move back.
    storage.set_state("deals:1:watermark", {"creation": minute + 10, "asins": []}, now)
    b.scanners[0]._finish(Scan(page=0, newest=minute + 5, newest_asins={asin(300)}), now)
    assert storage.get_state("deals:1:watermark") == {"creation": minute + 10, "asins": []}


def test_no_permit_does_not_count_as_an_attempt(storage: Storage) -> None:
    keepa, clock = FakeKeepa({asin(1): product(asin(1))}), Clock(T0)
    permits = FakePermits()

    def no_broker(*args: Any, **kwargs: Any) -> Any:
        raise BrokerUnavailable("no broker")

    permits.call = no_broker  # type: ignore[method-assign]
    storage.add_candidates(D, [asin(1)], source="test", now=T0)
    ingest = stage("ingest", storage, keepa, permits, clock)
    for _ in range(MAX_CLAIM_ATTEMPTS + 2):
        with pytest.raises(BrokerUnavailable):
            ingest.run_once(T0)
    attempts = storage.conn.execute("SELECT attempts FROM candidates").fetchall()
    assert attempts == [(0,)] and storage.claimable_candidates(D, T0) == 1
    assert keepa.product_calls == []


def test_a_new_worker_starts_from_the_fleets_learned_cost(storage: Storage) -> None:
    # Keepa charges 14 per product: more than its documented pricing (12 with offers=20).
    products, good, bad = mixed_catalog()
    storage.add_candidates(D, [*good, *bad], source="test", now=T0)
    first = FakePermits()
    offers_peek = {"peek_offers": True}
    stage(
        "ingest", storage, FakeKeepa(products, per_product=14), first, Clock(T0), worker=offers_peek
    ).run_once(T0)
    assert storage.get_state("cost_per_product") == 14.0  # learned by the first worker

    # A second worker (fresh cost model) asks for the learned 14 per product at once: it
    # does not overdraw the account relearning what the fleet knows.
    more = [asin(i) for i in range(30, 40)]
    products.update({a: product(a) for a in more})
    storage.add_candidates(D, more, source="test", now=T0)
    second = FakePermits()
    stage(
        "ingest",
        storage,
        FakeKeepa(products, per_product=14),
        second,
        Clock(T0),
        worker=offers_peek,
    ).run_once(T0)
    assert second.granted[0] == 14 * len(more)
