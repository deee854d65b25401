"""The simulator's bodies have the shape of those recorded from the live Keepa API.

Fixtures: ``tests/fixtures/keepa-real/`` (origin table in its README.md). For every field the
pipeline or the ``keepa`` package reads, the simulator must send it with the same JSON kind and
nesting as the recording; envelope, error and 429 bodies must have exactly the recorded keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "keepa-real"
ENVELOPE = {
    "timestamp",
    "tokensLeft",
    "refillIn",
    "refillRate",
    "tokenFlowReduction",
    "tokensConsumed",
    "processingTimeInMs",
}
# What the pipeline (workers.filters, workers.stages) and keepa 1.6.0 read of a product.
PRODUCT_FIELDS = ("asin", "domainId", "productType", "title", "csv", "stats", "lastUpdate")
STATS_FIELDS = ("current", "avg", "avg30", "avg90", "avg180", "min", "max", "totalOfferCount")
STATS_FIELDS += ("minInInterval", "maxInInterval")
OFFER_FIELDS = ("offers", "liveOffersOrder", "offersSuccessful")
DEAL_FIELDS = ("asin", "title", "rootCat", "current", "delta", "deltaPercent", "avg")
DEAL_FIELDS += ("creationDate", "lastUpdate", "categories", "deltaLast")


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def same_shape(ours: Any, theirs: Any, where: str) -> None:
    """Same JSON kind (null matches anything: Keepa nulls absent data); lists compare their
    non-null elements' kinds."""
    if ours is None or theirs is None:
        return
    assert kind(ours) == kind(theirs), f"{where}: {kind(ours)} vs recorded {kind(theirs)}"
    if isinstance(ours, list) and ours and theirs:
        mine = {kind(x) for x in ours if x is not None}
        rec = {kind(x) for x in theirs if x is not None}
        assert mine <= rec or not rec, f"{where}[]: {mine} vs recorded {rec}"
        a = next((x for x in ours if x is not None), None)
        b = next((x for x in theirs if x is not None), None)
        same_shape(a, b, f"{where}[0]")


def test_envelope_token_error_and_429_bodies(make_sim: Any) -> None:
    sim = make_sim()
    assert set(sim.token().json()) == set(load("token-agentarbitrage-1.json")) == ENVELOPE
    bad = sim.get("/deal", selection="{not json").json()
    recorded = load("error400-keepadeals-1.json")
    assert set(bad) == set(recorded)
    assert set(bad["error"]) == set(recorded["error"])
    ten = sim.product([sim.catalog.asin(0)], offers=10)
    recorded200 = load("error200-keepadeals-1.json")
    assert ten.status_code == 200 and set(ten.json()) == set(recorded200)
    empty = make_sim(tokens=0)
    assert set(empty.deal().json()) == set(load("error429-agentarbitrage-1.json"))


def test_product_shapes(sim: Any) -> None:
    recorded = load("product-keepacli-2.json")
    rec_p = recorded["products"][0]
    rec_offers = load("product-agentarbitrage-2.json")
    body = sim.product(sim.catalog.asins(0, 5), stats=90).json()
    assert set(body) >= ENVELOPE
    for p in body["products"]:
        for f in PRODUCT_FIELDS:
            assert f in p, f
            same_shape(p[f], rec_p[f], f)
        assert len(p["csv"]) == len(rec_p["csv"]) == 36
        for f in STATS_FIELDS:
            same_shape(p["stats"][f], rec_p["stats"][f], f"stats.{f}")
            if isinstance(rec_p["stats"][f], list):
                assert len(p["stats"][f]) == len(rec_p["stats"][f]), f
    with_offers = sim.product(sim.catalog.asins(0, 5), stats=90, offers=20).json()
    for p in with_offers["products"]:
        for f in OFFER_FIELDS:
            same_shape(p[f], rec_offers[f], f)
        for o in p["offers"]:
            for k, v in o.items():
                assert k in rec_offers["offers"][0], k
                same_shape(v, rec_offers["offers"][0][k], f"offers[].{k}")


def test_deal_shapes(sim: Any) -> None:
    recorded = load("deal-keepadeals-2.json")
    body = sim.deal().json()
    assert set(body) == set(recorded)  # envelope, deals, dealsCached
    for f in ("categoryIds", "categoryNames", "categoryCount", "dr"):
        same_shape(body["deals"][f], recorded["deals"][f], f"deals.{f}")
    rec = recorded["deals"]["dr"][0]
    for d in body["deals"]["dr"]:
        for f in DEAL_FIELDS:
            same_shape(d[f], rec[f], f)
