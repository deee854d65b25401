"""Keepa's 503 (backend down, KeepaAPI.java / Response.java: retry later) is handled exactly
like a 500: typed ``KeepaUnavailable`` (a ``KeepaServerError``), settled as an HTTP error with
its status, the batch given back and done on the next try; a 404 is typed ``KeepaNotFound``
and is no server error (a wrong base URL is not transient). Real simulator, real client, real
ingest stage and SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest
from stages.stage_support import FakePermits, make_settings

from common.errors import KeepaNotFound, KeepaServerError, KeepaUnavailable
from common.keepa import KeepaClient
from common.storage import Storage
from sim.server import SimServer
from workers.permit_client import settle_status
from workers.stages import build_stages

KEY = "status-key-0001"
D = 1


@pytest.mark.parametrize(("kind", "typed"), [("500", KeepaServerError), ("503", KeepaUnavailable)])
def test_a_5xx_gives_the_batch_back_and_the_next_try_does_it(
    kind: str, typed: type[KeepaServerError], tmp_path: Path
) -> None:
    with SimServer(port=0, refill_rate=5000, refill_period_s=0.05, seed=3) as server:
        client = KeepaClient(server.url, KEY)
        storage = Storage.open(str(tmp_path / "fleet.db"))
        try:
            storage.add_candidates(D, server.sim.catalog.asins(0, 10), source="test", now=0.0)
            permits = FakePermits()
            (ingest,) = build_stages(
                "ingest", make_settings(worker={"ingest_batch": 10}), client, permits, storage
            )
            server.sim.faults.add(kind, 1, path="/product")
            with pytest.raises(typed) as info:
                ingest.run_once(ingest.ctx.clock())
            assert type(info.value) is typed and info.value.status == int(kind)
            assert isinstance(info.value, KeepaServerError)  # a 503 is handled as a 500
            assert settle_status(info.value)[0::2] == ("http_error", int(kind))
            assert server.state(KEY)["tokens_consumed"] == 0  # not executed, not charged
            ingest.give_back()  # what the work loop does with a failed batch
            assert storage.totals()["candidates_waiting"] == 10
            assert ingest.run_once(ingest.ctx.clock()) == 10  # the next try does it all
            t = storage.totals()
            assert t["deals_live"] + t["rejections"] == 10 and t["candidates_waiting"] == 0
        finally:
            storage.close()
            client.close()


def test_404_is_typed_and_no_server_error() -> None:
    with SimServer(port=0) as server:
        client = KeepaClient(server.url + "/api", KEY)  # a wrong base URL
        try:
            with pytest.raises(KeepaNotFound) as info:
                client.token()
        finally:
            client.close()
    assert info.value.status == 404 and not isinstance(info.value, KeepaServerError)
    assert info.value.envelope is not None  # the zero envelope Keepa's bodies carry
