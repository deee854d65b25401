"""``/product``: costs, parameters, payload, Keepa's copy (update), latency."""

from __future__ import annotations

import math
import time

import pytest

from sim.api import latency_s
from sim.catalog import N_TYPES

KEY = "test-key-0001"


def cost_of(sim, asins, **params) -> int:
    resp = sim.product(asins, **params)
    assert resp.status_code == 200, resp.text
    return int(resp.json()["tokensConsumed"])


@pytest.mark.parametrize(
    ("offers_count", "offers_param", "cost"),
    [
        (18, 40, 12),  # docs/KEEPA.md's example: 2 found pages
        (18, 20, 12),
        (5, 20, 6),
        (0, 20, 5),  # refresh succeeded, no offer: 5 (one transcription of Keepa's docs)
        (25, 20, 12),  # 2 pages asked for, 3 there
        (25, 100, 18),
        (60, 100, 36),
    ],
)
def test_offer_pages_cost_six_each(sim, offers_count, offers_param, cost):
    p = sim.find(sim.with_offers(offers_count))
    resp = sim.product([p.asin], offers=offers_param, stats=1)
    body = resp.json()
    assert body["tokensConsumed"] == cost
    product = body["products"][0]
    assert product["stats"]["current"][11] == offers_count  # COUNT_NEW
    listed = min(offers_count, math.ceil(offers_param / 10) * 10)
    assert len(product["liveOffersOrder"]) == listed  # the live offers returned
    assert len(product["offers"]) >= listed  # and the historical ones
    assert product["offersSuccessful"] is True


def test_costs_add_up_per_found_product(sim):
    a = sim.find(sim.with_offers(18)).asin
    b = sim.find(sim.with_offers(5)).asin
    assert cost_of(sim, [a, b]) == 2
    assert cost_of(sim, [a, b], offers=20) == 18
    assert cost_of(sim, [a, b], buybox=1) == 6
    assert cost_of(sim, [a, b], buybox=1, offers=20) == 18  # buybox ignored with offers
    assert cost_of(sim, [a, a, b]) == 2  # a repeated ASIN is one product
    with_box = sim.product([a], buybox=1, stats=30).json()["products"][0]
    assert with_box["buyBoxSellerIdHistory"]
    assert with_box["stats"]["buyBoxPrice"] == with_box["stats"]["current"][1]
    assert with_box["csv"][18] is not None
    plain = sim.product([a], stats=30).json()["products"][0]
    assert "buyBoxSellerIdHistory" not in plain and plain["csv"][18] is None


def test_rating_costs_one_for_products_with_rating_data(sim):
    rated = sim.find(lambda p: p.rating >= 0).asin
    unrated = sim.find(lambda p: p.rating < 0).asin
    assert cost_of(sim, [rated], rating=1) == 2
    assert cost_of(sim, [unrated], rating=1) == 1
    body = sim.product([rated], rating=1, stats=30).json()["products"][0]
    assert body["csv"][16] is not None and body["csv"][17] is not None
    assert body["stats"]["current"][16] >= 0
    plain = sim.product([rated], stats=30).json()["products"][0]
    assert plain["csv"][16] is None
    assert plain["stats"]["current"][16] == -1


def test_unknown_asins_cost_nothing_and_yield_no_product(sim):
    unknown = "B000000000"
    assert sim.catalog.index(unknown) is None
    body = sim.product([unknown, "0123456789"]).json()
    # The simulator answers an unknown ASIN with an INVALID product (productType 4).
    assert [(p["asin"], p["productType"]) for p in body["products"]] == [
        (unknown, 4),
        ("0123456789", 4),
    ]
    assert all(p["csv"] is None for p in body["products"])
    assert body["tokensConsumed"] == 0
    known = sim.catalog.asin(42)
    body = sim.product([unknown, known.lower()]).json()
    assert [p["asin"] for p in body["products"] if p["productType"] != 4] == [known]
    assert body["tokensConsumed"] == 1
    assert sim.state()["tokens_consumed"] == 1


def test_product_payload(sim):
    asin = sim.find(lambda p: p.offers0 > 0 and p.rank0 > 0).asin
    body = sim.product([asin], stats=90).json()
    (product,) = body["products"]
    assert product["asin"] == asin
    assert product["domainId"] == 1
    assert isinstance(product["title"], str) and product["title"]
    csv = product["csv"]
    assert len(csv) == N_TYPES
    new = csv[1]  # [keepa_minute, price, ...]
    assert len(new) >= 4 and len(new) % 2 == 0
    minutes = new[0::2]
    assert minutes == sorted(minutes)
    assert minutes[-1] == product["lastUpdate"]
    stats = product["stats"]
    for field in ("current", "avg", "avg30", "avg90", "avg180", "min", "max"):
        assert len(stats[field]) == N_TYPES, field
    current, avg90 = stats["current"], stats["avg90"]
    assert current[1] > 0 and avg90[1] > 0  # prices in cents
    assert current[3] > 0  # sales rank
    assert new[-1] == current[1]
    assert stats["min"][1][1] <= current[1] <= stats["max"][1][1]
    # history=0 drops csv, same cost; no stats unless asked for.
    light = sim.product([asin], history=0).json()
    assert "csv" not in light["products"][0]
    assert "stats" not in light["products"][0]
    assert light["tokensConsumed"] == 1


def test_update_minus_one_returns_keepas_old_copy(sim):
    now = time.time()
    cat = sim.catalog
    # A product whose own copy is well over an hour old, with no deal event due soon (a new
    # event would update Keepa's copy by itself while the test runs).
    p = sim.find(lambda p: now - cat.model_last_update(p, now + 600) > 2 * 3600)
    stale = sim.product([p.asin], update=-1).json()["products"][0]
    # update=-1 never refreshes: the copy stays older than an hour, the same on every call.
    assert sim.now_minute() - stale["lastUpdate"] > 60
    again = sim.product([p.asin], update=-1).json()["products"][0]
    assert again["lastUpdate"] == stale["lastUpdate"]
    # Without update=-1 a copy older than an hour is refreshed...
    fresh = sim.product([p.asin]).json()["products"][0]
    assert fresh["lastUpdate"] >= sim.now_minute() - 1
    # ...and Keepa's copy is now the fresh one.
    assert (
        sim.product([p.asin], update=-1).json()["products"][0]["lastUpdate"]
        == (fresh["lastUpdate"])
    )
    # update=N hours: a copy older than an hour but younger than N hours is kept.
    q = sim.find(
        lambda q: (
            2 * 3600 < now - cat.model_last_update(q, now + 600) < 4 * 3600 and q.index != p.index
        )
    )
    kept = sim.product([q.asin], update=10).json()["products"][0]
    assert 120 <= sim.now_minute() - kept["lastUpdate"] <= 4 * 60 + 15


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"offers": 0}, 400),
        ({"offers": 120}, 405),
        ({"offers": 101}, 405),
        ({"offers": "x"}, 400),
        ({"stats": 0}, 405),
        ({"stats": "abc"}, 400),
        ({"history": 2}, 400),
        ({"update": -2}, 405),
        ({"buybox": "yes"}, 400),
        ({"domain": 7}, 405),
        ({"domain": "com"}, 400),
        ({"asin": "SHORT"}, 400),
        ({"asin": ""}, 400),
    ],
)
def test_bad_parameters(sim, params, status):
    query = {"domain": 1, "asin": sim.catalog.asin(0), **params}
    resp = sim.get("/product", **query)
    assert resp.status_code == status, resp.text
    body = resp.json()
    for field in sim.ENVELOPE_FIELDS:
        assert field in body
    assert body["tokensConsumed"] == 0
    assert sim.state()["tokens_consumed"] == 0


def test_at_most_100_asins(sim):
    asins = sim.catalog.asins(0, 101)
    resp = sim.product(asins)
    assert resp.status_code == 400
    assert resp.json()["tokensConsumed"] == 0
    assert sim.product(asins[:100]).json()["tokensConsumed"] == 100


def test_missing_domain_or_asin(sim):
    assert sim.get("/product", asin=sim.catalog.asin(0)).status_code == 400
    assert sim.get("/product", domain=1).status_code == 400


def test_offer_refresh_failure_costs_one(make_sim):
    sim = make_sim(offer_fail_rate=1.0)
    p = sim.find(sim.with_offers(18))
    body = sim.product([p.asin], offers=20).json()
    assert body["tokensConsumed"] == 1
    product = body["products"][0]
    assert product["offersSuccessful"] is False
    assert product["offers"] == []


def test_latency_model_grows_with_asins_and_offers():
    seed = 1
    plain = [latency_s(0, seed, n, n, offers=False) for n in (1, 10, 100)]
    assert plain == sorted(plain) and plain[0] < plain[-1]
    offers = [latency_s(seq, seed, 10, 10, offers=True) for seq in range(2000)]
    assert all(2.0 <= x <= 20.0 for x in offers)
    assert 4.0 <= sum(offers) / len(offers) <= 6.0  # about 5 s on average
    assert min(offers) > max(plain)
    assert latency_s(7, seed, 100, 100, offers=True) > latency_s(7, seed, 1, 1, offers=True)


def test_latency_is_applied_and_scaled(make_sim):
    sim = make_sim(latency_scale=0.01)
    p = sim.find(sim.with_offers(5))
    body = sim.product([p.asin], offers=20).json()
    assert body["processingTimeInMs"] >= 20  # >= 2 s x 0.01


def test_offers_1_to_19_is_a_200_with_an_error_and_no_products(sim):
    """Recorded (tests/fixtures/keepa-real/error200-keepadeals-1.json): offers=10 is HTTP 200
    with an error object, no products, 0 tokens."""
    for offers in (1, 10, 19):
        resp = sim.product([sim.catalog.asin(0)], offers=offers)
        assert resp.status_code == 200
        body = resp.json()
        assert "products" not in body
        assert body["tokensConsumed"] == 0
        assert body["error"]["type"] == "invalidParameter"
        assert "minimum of 20 offers" in body["error"]["message"]


def test_csv_and_stats_have_36_slots_with_null_where_no_history(sim):
    body = sim.product([sim.catalog.asin(3)], stats=90, offers=20, buybox=1).json()
    product = body["products"][0]
    assert product["productType"] == 0
    assert len(product["csv"]) == 36
    for i in (5, 6, 8, 9, 13, 14, 15, 19, 27, 28, 29, 30, 31, 32, 33):
        assert product["csv"][i] is None, i
    for i, series in enumerate(product["csv"]):
        if series is not None and i in (7, 18, *range(19, 30), 32):
            assert len(series) % 3 == 0, i  # shipping types: time, price, shipping
        elif series is not None:
            assert len(series) % 2 == 0, i
    for field in ("current", "avg", "avg30", "avg90", "avg180", "min", "max"):
        assert len(product["stats"][field]) == 36, field


def test_extra_data_only_with_offers(sim):
    p = sim.find(lambda prof: prof.fba_premium >= 0 and prof.offers0 > 0 and prof.rating >= 0)
    plain = sim.product([p.asin], stats=90).json()["products"][0]
    for i in (10, 16, 17, 18):  # NEW_FBA, RATING, COUNT_REVIEWS, BUY_BOX_SHIPPING
        assert plain["csv"][i] is None, i
        assert plain["stats"]["current"][i] == -1, i
    rich = sim.product([p.asin], stats=90, offers=20).json()["products"][0]
    assert rich["csv"][16] is not None and rich["stats"]["current"][16] >= 0


def test_more_than_20_asins_with_offers_accepted_unless_strict(make_sim):
    lax = make_sim()
    asins = lax.catalog.asins(0, 21)
    assert lax.product(asins, offers=20).status_code == 200  # as Keepa did in 2025
    assert lax.state()["max_offer_asins"] == 21
    strict = make_sim(strict_offer_cap=True)
    resp = strict.product(asins, offers=20)
    assert resp.status_code == 400, resp.text
    assert resp.json()["tokensConsumed"] == 0
    assert strict.product(asins[:20], offers=20).status_code == 200
    assert strict.product(asins, stats=90).status_code == 200  # no offers: up to 100


def test_historical_offers_stay_in_offers_but_not_in_live_offers_order(sim):
    """Product.java: ``offers`` also lists offers no longer live; ``liveOffersOrder`` holds the
    indices of the live ones in Amazon's listing order. ``totalOfferCount`` (Stats.java)
    counts the offers of all conditions; COUNT_NEW (11) is the new-offer count."""
    products = sim.product(sim.catalog.asins(0, 20), stats=90, offers=20).json()["products"]
    product = next(
        p
        for p in products
        if p["stats"]["current"][12] > 0 and len(p["offers"]) > len(p["liveOffersOrder"]) >= 2
    )
    offers, live = product["offers"], product["liveOffersOrder"]
    stats = product["stats"]
    n_new, n_used = stats["current"][11], stats["current"][12]
    assert len(live) == min(n_new, 20) and len(set(live)) == len(live)
    historical = [o for i, o in enumerate(offers) if i not in live]
    now = sim.now_minute()
    assert all(o["lastSeen"] < now - 60 for o in historical)  # last seen days ago
    assert all(offers[i]["lastSeen"] >= now - 1 and offers[i]["condition"] == 1 for i in live)
    totals = [o["offerCSV"][1] + o["offerCSV"][2] for o in (offers[i] for i in live)]
    assert totals == sorted(totals)  # listing order: lowest price with shipping first
    assert stats["totalOfferCount"] == n_new + n_used > n_new  # all conditions
    assert stats["retrievedOfferCount"] == len(offers)
    without = sim.product([product["asin"]], stats=90).json()["products"][0]
    assert "offers" not in without and "liveOffersOrder" not in without
    assert without["stats"]["totalOfferCount"] == n_new + n_used  # recorded without offers too


def test_stats_min_max_are_all_time_and_in_interval_cover_the_stats_days(sim):
    """Stats.java: ``min``/``max`` are the all-time extremes, ``minInInterval``/
    ``maxInInterval`` those of the ``stats`` interval: ``[keepa_minute, value]``, null for a
    type without data, ``[-1, -1]`` for one without data in the interval (recorded)."""
    p = sim.find(lambda prof: prof.amp > 0.3 and prof.offers0 > 0 and prof.rank0 > 0)
    product = sim.product([p.asin], stats=1).json()["products"][0]
    stats = product["stats"]
    # The interval ends at Keepa's copy of the product (``lastUpdate``, up to an hour old),
    # not at the request.
    now = product["lastUpdate"]
    assert sim.now_minute() - 61 <= now <= sim.now_minute()
    for field in ("min", "max", "minInInterval", "maxInInterval"):
        assert len(stats[field]) == N_TYPES, field
    for i in range(N_TYPES):
        lo, hi = stats["min"][i], stats["max"][i]
        lo_in, hi_in = stats["minInInterval"][i], stats["maxInInterval"][i]
        if lo is None:
            assert hi is None and lo_in is None and hi_in is None, i
            continue
        assert len(lo) == len(hi) == len(lo_in) == len(hi_in) == 2, i
        assert lo[1] <= hi[1], i
        if lo_in != [-1, -1]:
            assert lo[1] <= lo_in[1] <= hi_in[1] <= hi[1], i
            assert now - 24 * 60 - 1 <= lo_in[0] <= now and now - 24 * 60 - 1 <= hi_in[0], i
    assert stats["min"][5] is None  # COLLECTIBLE: no data at all
    # A volatile price's all-time range is wider than one day's, and reaches back further.
    assert stats["min"][1][1] < stats["minInInterval"][1][1]
    assert stats["max"][1][1] > stats["maxInInterval"][1][1]
    assert min(stats["min"][1][0], stats["max"][1][0]) < now - 24 * 60
