"""Fixtures of the simulator tests: simulators on random ports, always stopped, and a small
HTTP client over plain ``requests`` (the tests speak HTTP, not the project's Keepa client).

Test modules reach the helpers through the ``Client`` the fixtures return (``client.KEY``,
``client.find(...)``, ``client.with_offers(n)``...), since a conftest is not importable."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from sim.catalog import KEEPA_EPOCH_MINUTES, Catalog, Profile
from sim.server import SimServer

KEY = "test-key-0001"
ENVELOPE_FIELDS = (
    "timestamp",
    "tokensLeft",
    "refillIn",
    "refillRate",
    "tokenFlowReduction",
    "tokensConsumed",
    "processingTimeInMs",
)
HTTP_TIMEOUT_S = 20.0
NEWEST_FIRST = {"page": 0, "domainId": 1, "priceTypes": [1], "dateRange": 1, "sortType": 1}


def find_product(
    catalog: Catalog, predicate: Callable[[Profile], bool], *, limit: int = 50_000
) -> Profile:
    """The first catalog product matching ``predicate``."""
    for i in range(min(limit, catalog.size)):
        p = catalog.profile(i)
        if predicate(p):
            return p
    raise AssertionError("no product in the catalog matches")


def with_offers(n: int) -> Callable[[Profile], bool]:
    """Products that have exactly ``n`` new offers at any time (the count does not drift)."""

    def pred(p: Profile) -> bool:
        if n == 0:
            return p.offers0 == 0
        return p.offers0 == n and p.offers_amp < 0.5 and not p.has_amazon

    return pred


def now_minute() -> int:
    return int(time.time() // 60) - KEEPA_EPOCH_MINUTES


class Client:
    """Plain HTTP against one simulator, and the helpers of the tests."""

    KEY = KEY
    ENVELOPE_FIELDS = ENVELOPE_FIELDS
    NEWEST_FIRST = NEWEST_FIRST
    with_offers = staticmethod(with_offers)
    now_minute = staticmethod(now_minute)

    def __init__(self, server: SimServer) -> None:
        self.server = server
        self.url = server.url
        self.session = requests.Session()

    @property
    def catalog(self) -> Catalog:
        return self.server.sim.catalog

    def find(self, predicate: Callable[[Profile], bool], *, limit: int = 50_000) -> Profile:
        return find_product(self.catalog, predicate, limit=limit)

    def get(self, path: str, **params: Any) -> requests.Response:
        params.setdefault("key", KEY)
        return self.session.get(self.url + path, params=params, timeout=HTTP_TIMEOUT_S)

    def token(self, key: str = KEY) -> requests.Response:
        return self.get("/token", key=key)

    def product(self, asins: list[str], key: str = KEY, **params: Any) -> requests.Response:
        return self.get("/product", key=key, domain=1, asin=",".join(asins), **params)

    def deal(self, selection: dict[str, Any] | None = None, key: str = KEY) -> requests.Response:
        sel = json.dumps(selection if selection is not None else NEWEST_FIRST)
        return self.get("/deal", key=key, selection=sel)

    def admin(self, what: str, **params: Any) -> requests.Response:
        return self.session.post(f"{self.url}/_sim/{what}", params=params, timeout=HTTP_TIMEOUT_S)

    def state(self, key: str = KEY) -> dict[str, Any]:
        resp = self.session.get(f"{self.url}/_sim/state", params={"key": key}, timeout=5)
        resp.raise_for_status()
        return dict(resp.json())

    def close(self) -> None:
        self.session.close()


@pytest.fixture
def make_sim() -> Iterator[Callable[..., Client]]:
    """``make_sim(**SimServer kwargs)`` -> a Client of a started simulator (stopped after).
    The refill period defaults to an hour: no refill happens unless a test asks for one."""
    servers: list[SimServer] = []
    clients: list[Client] = []

    def make(**kwargs: Any) -> Client:
        kwargs.setdefault("refill_period_s", 3600.0)
        server = SimServer(port=0, **kwargs).start()
        servers.append(server)
        client = Client(server)
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for c in clients:
            c.close()
        for s in servers:
            s.stop()


@pytest.fixture
def sim(make_sim: Callable[..., Client]) -> Client:
    """A simulator with the defaults: full accounts (1200 tokens), no refill, no latency."""
    return make_sim()
