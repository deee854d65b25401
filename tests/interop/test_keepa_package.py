"""The unmodified ``keepa`` package (pinned in the ``test`` extras) against the simulator.

Only the host changes: the package always calls ``https://api.keepa.com``, so its
``requests.get`` calls are pointed at the simulator; its code is not touched. Before issue 11
``query(..., stats=90, history=True)`` crashed in its csv parser on the simulator's 19 slots.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

keepa = pytest.importorskip("keepa")  # a declared test dependency: make test installs it

from sim.server import SimServer  # noqa: E402

KEY = "interop-key-0001"
KEEPA_URL = "https://api.keepa.com"


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, SimServer]]:
    with SimServer(port=0, strict_offer_cap=True) as server:
        real_get = requests.get

        def to_sim(url: str, *args: Any, **kwargs: Any) -> requests.Response:
            assert url.startswith(KEEPA_URL), url
            return real_get(server.url + url[len(KEEPA_URL) :], *args, **kwargs)

        monkeypatch.setattr(requests, "get", to_sim)
        yield keepa.Keepa(KEY), server


def test_query_with_stats_history_and_offers_parses_every_product(api: Any) -> None:
    client, server = api
    asins = server.sim.catalog.asins(0, 20)
    products = client.query(asins, stats=90, history=True, offers=20, progress_bar=False)
    assert sorted(p["asin"] for p in products) == sorted(asins)
    for p in products:
        assert len(p["csv"]) == len(keepa.csv_indices)  # one slot per price type it knows
        assert "stats_parsed" in p
        if p["csv"][1]:
            assert len(p["data"]["NEW"]) == len(p["data"]["NEW_time"])
        if p["csv"][18]:  # a shipping triplet type
            assert len(p["data"]["BUY_BOX_SHIPPING"]) == len(p["csv"][18]) // 3
    assert any(p["csv"][1] for p in products)
    assert server.sim.max_offer_asins == 20


def test_query_without_history(api: Any) -> None:
    client, server = api
    asins = server.sim.catalog.asins(100, 50)
    products = client.query(asins, stats=90, history=False, progress_bar=False)
    assert sorted(p["asin"] for p in products) == sorted(asins)
    assert all("stats_parsed" in p and "data" not in p for p in products)


def test_deals_parses_every_deal(api: Any) -> None:
    client, _ = api
    deals = client.deals({"page": 0, "domainId": 1, "priceTypes": [1], "sortType": 1})
    assert len(deals["dr"]) == 150
    for d in deals["dr"]:
        assert len(d["current"]) == len(keepa.csv_indices)
        assert len(d["delta"]) == 4
    assert {"categoryIds", "categoryNames", "categoryCount"} <= set(deals)
