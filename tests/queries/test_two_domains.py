"""Two queries on two domains in one pipeline, against the real simulator and a real SQLite
file: each query's pages go to its domain, candidates and deals stay keyed by domain, and
every deal row names the query that found it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from stages.stage_support import FakePermits

from common.config import load_settings
from common.keepa import KeepaClient
from common.storage import Storage
from sim import server
from workers.stages import build_stages


class RecordingKeepa(KeepaClient):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.deal_calls: list[dict[str, Any]] = []
        self.product_domains: list[int] = []

    def deal(self, selection: Any) -> Any:
        self.deal_calls.append(dict(selection))
        return super().deal(selection)

    def product(self, asins: Any, **kw: Any) -> Any:
        self.product_domains.append(kw["domain"])
        return super().product(asins, **kw)


def test_two_queries_on_two_domains(tmp_path: Path) -> None:
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(
        "[filters]\nmin_drop_percent = 0\nmin_profit = -1000000000\nmax_sales_rank = 1000000000"
        "\nmax_offers = 10000\n"
        '[[queries]]\nname = "us"\nselection = { domainId = 1, priceTypes = [1], sortType = 1 }\n'
        '[[queries]]\nname = "de"\nselection = { domainId = 3, priceTypes = [1], sortType = 4 }\n'
        "page_limit = 1\n"
    )
    settings = load_settings(cfg, env={})
    storage = Storage.open(str(tmp_path / "fleet.db"))
    with server.SimServer(
        port=0, refill_rate=5000, refill_period_s=0.05, seed=3, latency_scale=0.0
    ) as sim:
        keepa = RecordingKeepa(sim.url, "two-domains-key", read_timeout_s=20)
        deals, ingest, _refresh = build_stages("all", settings, keepa, FakePermits(), storage)
        now = time.time()
        for _ in range(60):  # bounded: the first us scan pages until the queue is full
            if deals.urgency(now) > 0:
                deals.run_once(now)
            if {c["domainId"] for c in keepa.deal_calls} == {1, 3}:
                break
        domains = {c["domainId"] for c in keepa.deal_calls}
        assert domains == {1, 3}
        de_calls = [c for c in keepa.deal_calls if c["domainId"] == 3]
        assert de_calls[0] == {"domainId": 3, "priceTypes": [1], "sortType": 4, "page": 0}
        assert storage.claimable_candidates(1, now) > 0
        assert storage.claimable_candidates(3, now) > 0
        for _ in range(40):  # bounded; ingest takes the domain with most waiting first
            ingest.run_once(now)
            if set(keepa.product_domains) == {1, 3}:
                break
        keepa.close()
    assert set(keepa.product_domains) == {1, 3}
    rows = list(storage.db.query("SELECT domain, query, count(*) AS n FROM deals GROUP BY 1, 2"))
    assert {(r["domain"], r["query"]) for r in rows} == {(1, "us"), (3, "de")}
    storage.close()
