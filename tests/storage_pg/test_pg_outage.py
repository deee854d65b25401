"""PostgreSQL going away: the cluster of these tests is stopped for real (``pg_ctl stop``),
so the connection is lost and new ones are refused.

* Stopped briefly, right after the worker paid for a commit call: the write waits for the
  server (retries, reconnects) and the paid-for deals land; one log line when the outage
  began, one when it ended.
* Stopped longer than the retry limit: the call raises ``StorageUnavailable``, a
  ``StorageError`` (the worker loop's storage failure: claims given back, backoff), and
  ``problem()`` says what is wrong; once the server is back the same object works again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pg_support import NO_SERVER, PgCluster, pg_binaries
from stages.stage_support import FakePermits, make_settings
from support import wait_until

from common.errors import StorageError, StorageUnavailable
from common.keepa import KeepaClient
from common.storage_pg import PostgresStorage
from sim import server
from workers.stages import build_stages

KEY = "pg-outage-key"
D = 1
T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    """A cluster of this module's own: its tests stop and start it."""
    if pg_binaries() is None:
        pytest.skip(NO_SERVER)
    c = PgCluster()
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture
def url(cluster: PgCluster) -> Iterator[str]:
    if not cluster.started:
        cluster.start_again()
    u = cluster.new_database()
    yield u
    if not cluster.started:
        cluster.start_again()
    cluster.drop_database(u)


class StopAfterFirstCommitCall(KeepaClient):
    """The real client; right after the first paid commit call (with price history) returns,
    the database server is stopped, and started again once the storage has noticed."""

    def __init__(self, cluster: PgCluster, storage: PostgresStorage, *args: Any) -> None:
        super().__init__(*args, read_timeout_s=20)
        self.cluster = cluster
        self.storage = storage
        self.paid_commits: list[list[str]] = []
        self.restarter: threading.Thread | None = None

    def product(self, asins: Any, **kwargs: Any) -> Any:
        resp = super().product(list(asins), **kwargs)
        if kwargs.get("history") and not self.paid_commits:
            self.paid_commits.append(list(asins))
            self.cluster.stop_server()
            self.restarter = threading.Thread(target=self._restart_when_noticed)
            self.restarter.start()
        elif kwargs.get("history"):
            self.paid_commits.append(list(asins))
        return resp

    def _restart_when_noticed(self) -> None:
        wait_until(lambda: self.storage.problem() is not None, 30, interval=0.05)
        self.cluster.start_again()


def test_a_brief_outage_after_a_paid_call_loses_nothing(
    cluster: PgCluster, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    storage = PostgresStorage.open_url(url)
    with server.SimServer(port=0, refill_rate=5000, refill_period_s=0.05, seed=3) as sim:
        keepa = StopAfterFirstCommitCall(cluster, storage, sim.url, KEY)
        try:
            settings = make_settings(worker={"ingest_batch": 40, "commit_batch": 4})
            (deals,) = build_stages("deals", settings, keepa, FakePermits(), storage)
            deals.run_once(deals.ctx.clock())
            assert storage.claimable_candidates(D, time.time()) >= 40
            (ingest,) = build_stages("ingest", settings, keepa, FakePermits(), storage)
            with caplog.at_level(logging.INFO, logger="common.storage_pg"):
                assert ingest.run_once(ingest.ctx.clock()) == 40
        finally:
            keepa.close()
            if keepa.restarter is not None:  # the server back before anything else
                keepa.restarter.join(timeout=60)
    assert keepa.restarter is not None
    paid = [a for call in keepa.paid_commits for a in call]
    assert paid, "the feed gave no deal to commit"
    # Every ASIN of every paid commit call is a deal or a rejection: none back in the queue.
    placed = {
        r[0]
        for r in storage._read(
            "SELECT asin FROM deals UNION SELECT asin FROM rejections WHERE reason <> 'attempts'"
        )
    }
    assert set(paid) <= placed
    queued = {r[0] for r in storage._read("SELECT asin FROM candidates")}
    assert not set(paid) & queued
    assert storage.integrity_check() == "ok"
    assert storage.problem() is None
    lines = [r.getMessage() for r in caplog.records if r.name == "common.storage_pg"]
    assert sum("retrying" in m for m in lines) == 1, lines  # said once, not once per retry
    assert sum("working again" in m for m in lines) == 1, lines
    storage.close()


def test_a_long_outage_raises_storage_unavailable_then_recovers(
    cluster: PgCluster, url: str
) -> None:
    storage = PostgresStorage.open_url(url)
    storage.retry_limit_s = 1.0
    storage.add_candidates(D, ["B000000001", "B000000002"], source="deal", now=T0)
    cluster.stop_server()
    with pytest.raises(StorageUnavailable, match="retried for 1 s") as err:
        storage.claim_candidates(D, "w", 2, now=T0, ttl_s=60)
    assert isinstance(err.value, StorageError)
    problem = storage.problem()
    assert problem is not None and "unreachable" in problem
    cluster.start_again()
    assert storage.claim_candidates(D, "w", 2, now=T0, ttl_s=60) == ["B000000001", "B000000002"]
    assert storage.problem() is None
    storage.close()


class QuickOpen(PostgresStorage):
    open_retry_s = 0.5


def test_opening_while_the_server_is_down_is_a_clear_error(cluster: PgCluster, url: str) -> None:
    cluster.stop_server()
    with pytest.raises(StorageError, match="cannot connect to the database") as err:
        QuickOpen.open_url(url.replace("postgres@", "postgres:pw@"))
    assert "pw" not in str(err.value)


def test_only_a_server_not_there_yet_is_waited_for(cluster: PgCluster, url: str) -> None:
    """Opening retries a refused connection (a server starting), not what the server itself
    refused (no such database): that is reported at once."""
    import psycopg

    from common.storage_pg import _worth_waiting

    with pytest.raises(psycopg.OperationalError) as missing:
        psycopg.connect(url.rsplit("/", 1)[0] + "/no_such_database", connect_timeout=5)
    assert not _worth_waiting(missing.value)
    cluster.stop_server()
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(url, connect_timeout=5)
    assert _worth_waiting(refused.value)
