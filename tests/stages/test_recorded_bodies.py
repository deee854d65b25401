"""Bodies recorded from the live Keepa API (tests/fixtures/keepa-real/, origin table in its
README.md) parse through the client and the stages: every deal of the recorded page becomes a
candidate through the real deals stage and client over HTTP, every recorded product is judged
with a named reason, live offers are read through ``liveOffersOrder``, and deal ``delta`` has
Keepa's sign."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from stages.stage_support import FakePermits, make_settings

from common.config import FilterSettings
from common.keepa import KeepaClient, KeepaResponse, TokenEnvelope
from common.storage import Storage
from sim.server import SimServer
from workers.filters import PRICE_USED, facts
from workers.stages import build_stages, judge, products_of

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "keepa-real"
NEW, WAREHOUSE = 1, 9


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def response(body: dict) -> KeepaResponse:
    envelope = TokenEnvelope.from_json(body)
    assert envelope is not None
    return KeepaResponse(status=200, envelope=envelope, payload=body, elapsed_s=0.0)


class RecordedDeals:
    """An HTTP server answering ``/deal`` page 0 with the recorded page, byte for byte, and
    later pages with the same envelope and no deals (the end of the feed)."""

    def __init__(self) -> None:
        raw = (FIXTURES / "deal-keepadeals-2.json").read_bytes()
        empty = json.loads(raw)
        empty["deals"]["dr"] = []
        pages = {0: raw}
        self.selections: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                selection = json.loads(query["selection"][0])
                outer.selections.append(selection)
                body = pages.get(selection.get("page", 0), json.dumps(empty).encode())
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> RecordedDeals:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def recorded_deals() -> Iterator[RecordedDeals]:
    with RecordedDeals() as server:
        yield server


def test_every_recorded_deal_becomes_a_candidate(
    recorded_deals: RecordedDeals, storage: Storage
) -> None:
    recorded = [d["asin"] for d in load("deal-keepadeals-2.json")["deals"]["dr"]]
    assert len(recorded) == len(set(recorded)) == 150
    client = KeepaClient(recorded_deals.url, "recorded-key-0001")
    permits = FakePermits()
    (deals,) = build_stages(
        "deals", make_settings(worker={"ingest_batch": 50}), client, permits, storage
    )
    try:
        now = deals.ctx.clock()
        assert deals.run_once(now) == 150  # page 0: the recorded page, all of it read
        assert deals.run_once(now) == 0  # page 1: the end of the feed
    finally:
        client.close()
    assert [s["page"] for s in recorded_deals.selections] == [0, 1]
    assert storage.totals(now)["candidates_waiting"] == 150
    claimed = storage.claim_candidates(1, "w-test", 1000, now=now, ttl_s=60)
    assert sorted(claimed) == sorted(recorded)
    assert permits.settles == [(5, 5), (5, 5)]  # the recorded tokensConsumed, learnt


def test_recorded_products_are_judged_with_a_named_reason() -> None:
    body = load("product-keepacli-2.json")
    bare = load("product-agentarbitrage-2.json")
    body = {**body, "products": [*body["products"], bare]}
    asins = [p["asin"] for p in body["products"]]
    passed, rejected = judge(asins, response(body), FilterSettings())
    assert len(passed) + len(rejected) == len(asins) == 2
    assert all(r.reason for r in rejected)


def test_an_invalid_product_is_not_found_and_a_variation_parent_its_own_reason() -> None:
    body = load("token-agentarbitrage-1.json")
    body["products"] = [
        {"asin": "B000000001", "productType": 4, "csv": None},
        {"asin": "B000000002", "productType": 5, "csv": None},
    ]
    _, rejected = judge(["B000000001", "B000000002"], response(body), FilterSettings())
    assert [r.reason for r in rejected] == ["not_found", "variation_parent"]
    # What the cost model counts as found (tokens per found product): never an INVALID one.
    assert list(products_of(response(body))) == ["B000000002"]


def test_live_offers_are_read_through_live_offers_order() -> None:
    """The recorded product lists 121 offers, of which one is live (liveOffersOrder [38], a
    used offer); its COUNT_NEW is -1 and totalOfferCount (all conditions) 1. So it has no live
    new offer: neither the historical offers nor the used one count as competition."""
    product = load("product-agentarbitrage-2.json")
    assert len(product["offers"]) == 121 and product["liveOffersOrder"] == [38]
    assert product["stats"]["current"][11] == -1 and product["stats"]["totalOfferCount"] == 1
    assert facts(product).offers == 0
    used = copy.deepcopy(product)
    used["stats"]["current"][12] = -1  # no COUNT_USED either: the live used offer counts
    assert facts(used, PRICE_USED).offers == 1


def test_live_offers_of_the_simulator_exclude_its_historical_offers() -> None:
    with SimServer(port=0, seed=3) as server:
        client = KeepaClient(server.url, "recorded-key-0002")
        try:
            asins = server.sim.catalog.asins(0, 20)
            products = client.product(asins, stats=90, offers=20).payload["products"]
        finally:
            client.close()
    mixed = [p for p in products if len(p["offers"]) > len(p["liveOffersOrder"]) > 0]
    assert mixed, "products with historical offers"
    for p in mixed:
        p["stats"]["current"][11] = -1  # without COUNT_NEW the live offers are the count
        live_new = [i for i in p["liveOffersOrder"] if p["offers"][i]["condition"] == 1]
        assert facts(p).offers == len(live_new) < len(p["offers"])


def test_deal_delta_is_the_average_minus_current_positive_when_dropped() -> None:
    """Deal.java: delta is "the absolute difference between the current value and the average
    value of the respective date range interval", and the recorded page says which way round:
    ``avg - current``, positive = the price dropped (the sign KEEPA_API.md gives). In every
    one of its deals, for every date range and price type (WAREHOUSE aside, whose current is
    of another offer), and deltaPercent is delta in percent of avg. The simulator's feed
    follows the same rule."""
    recorded = load("deal-keepadeals-2.json")["deals"]["dr"]
    with SimServer(port=0, seed=3) as server:
        client = KeepaClient(server.url, "recorded-key-0003")
        try:
            sel = {"page": 0, "domainId": 1, "priceTypes": [NEW], "dateRange": 1, "sortType": 1}
            simulated = client.deal(sel).payload["deals"]["dr"]
        finally:
            client.close()
    for source, deals in (("recorded", recorded), ("simulated", simulated)):
        checked = dropped = 0
        for d in deals:
            for r, (avg, delta, pct) in enumerate(
                zip(d["avg"], d["delta"], d["deltaPercent"], strict=True)
            ):
                for t, current in enumerate(d["current"]):
                    if t == WAREHOUSE or delta[t] == 0 or current < 0 or avg[t] <= 0:
                        continue
                    assert delta[t] == avg[t] - current, (source, d["asin"], r, t)
                    assert abs(pct[t] - delta[t] * 100 / avg[t]) <= 1, (source, d["asin"], r, t)
                    checked += 1
                    dropped += delta[t] > 0
        assert checked > 100 and dropped > 0, source
    # The simulator lists drops of the selected price type: positive deltas.
    assert all(d["delta"][1][NEW] > 0 for d in simulated)
