"""The SQLite storage: schema, idempotent upserts, claims that expire and come back,
concurrent claimers, clear errors for unusable paths."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from common.errors import StorageError
from common.storage import MAX_CLAIM_ATTEMPTS, SCHEMA_VERSION, Rejection, Storage

D = 1
T0 = 1_700_000_000.0


def asins(n: int, prefix: str = "B0") -> list[str]:
    return [f"{prefix}{i:08d}" for i in range(n)]


def deal(asin: str, current: int = 1000, **extra: object) -> dict[str, object]:
    return {
        "asin": asin,
        "title": f"title {asin}",
        "price_type": 1,
        "current": current,
        "avg90": 2000,
        "drop_percent": 50.0,
        "sales_rank": 100,
        "offers": 3,
        "profit": 700,
        "raw": json.dumps({"asin": asin}),
        **extra,
    }


def table_rows(s: Storage, sql: str) -> list[tuple[object, ...]]:
    return s.conn.execute(sql).fetchall()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """The tests taking ``storage`` run on both backends (PostgreSQL: a fresh database of the
    session's own cluster, see tests/pg_support.py)."""
    if request.param == "sqlite":
        target = str(tmp_path / "db" / "fleet.db")
    else:
        target = request.getfixturevalue("pg_url")
    s = Storage.open(target)
    try:
        yield s
    finally:
        s.close()


def test_postgres_url_selects_the_postgres_backend(pg_url: str) -> None:
    from common.storage_pg import PostgresStorage

    with Storage.open(pg_url) as s:
        assert isinstance(s, PostgresStorage) and s.schema_version() == SCHEMA_VERSION
    with pytest.raises(StorageError, match="not supported"):
        Storage.open("mysql://x/y")


def test_postgres_claims_skip_rows_locked_by_another_claim(pg_url: str) -> None:
    """FOR UPDATE SKIP LOCKED: a claim does not wait for another open claim and never gets
    its rows."""
    with Storage.open(pg_url) as a, Storage.open(pg_url) as b:
        a.add_candidates(D, asins(10), source="deal", now=T0)
        with a.transaction():
            first = a.claim_candidates(D, "a", 5, now=T0, ttl_s=60)
            second = b.claim_candidates(D, "b", 10, now=T0, ttl_s=60)  # returns at once
        assert sorted(first + second) == asins(10) and not set(first) & set(second)


def test_postgres_connection_loss_is_retried(pg_url: str, pg_cluster: Any) -> None:
    with Storage.open(pg_url) as s:
        s.add_candidates(D, asins(3), source="deal", now=T0)
        with pg_cluster.admin() as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (pg_url.rsplit("/", 1)[1],),
            )
        assert len(s.claim_candidates(D, "w", 3, now=T0, ttl_s=60)) == 3


# --- opening --------------------------------------------------------------------------


def test_open_creates_parent_wal_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "fleet.db"
    with Storage.open(str(path)) as s:
        assert path.exists()
        assert table_rows(s, "PRAGMA journal_mode") == [("wal",)]
        assert table_rows(s, "PRAGMA busy_timeout")[0][0] >= 30_000
        assert s.schema_version() == SCHEMA_VERSION
        assert s.integrity_check() == "ok"
    # Opening again is a no-op migration.
    with Storage.open(str(path)) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert set(sqlite_utils.Database(s.conn).table_names()) >= {
            "candidates",
            "deals",
            "rejections",
            "seen",
            "state",
        }


def test_file_opens_without_project_code(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    with Storage.open(str(path)) as s:
        s.add_candidates(D, ["B000000001"], source="deal", now=T0)
        s.commit_deals(D, [deal("B000000002", history="[[1, 2]]")], T0)
    db = sqlite_utils.Database(str(path))  # plain sqlite-utils, no project code
    try:
        rows = list(db["deals"].rows)
        assert rows[0]["asin"] == "B000000002" and rows[0]["current"] == 1000
        assert rows[0]["history"] == "[[1, 2]]"
        assert db["candidates"].pks == ["domain", "asin"]
        assert db["deals"].pks == ["domain", "asin"]
        assert [r["asin"] for r in db["candidates"].rows] == ["B000000001"]
    finally:
        db.close()


def test_parent_is_a_file_gives_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(StorageError) as err:
        Storage.open(str(blocker / "fleet.db"))
    assert "cannot create the directory" in str(err.value)
    assert str(blocker) in str(err.value)


def test_directory_as_database_path_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="is a directory"):
        Storage.open(str(tmp_path))


def test_not_a_database_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not an sqlite file at all" * 100)
    with pytest.raises(StorageError) as err:
        Storage.open(str(path))
    assert str(path) in str(err.value) and "not a database" in str(err.value)


def test_read_only_database_fails_at_open(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    Storage.open(str(path)).close()
    # A read-only connection stands in for an unwritable file (the tests may run as root).
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    s = Storage(conn, str(path))
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        s._migrate(T0)
    conn.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    with Storage.open(str(path)) as s:
        s.set_state("schema_version", SCHEMA_VERSION + 1, T0)
    with pytest.raises(StorageError, match="newer than this program"):
        Storage.open(str(path))


# --- candidates -----------------------------------------------------------------------


def test_add_candidates_is_idempotent_and_skips_deals_and_rejections(storage: Storage) -> None:
    assert (
        storage.add_candidates(D, ["b000000001", "B000000002", "B000000001"], source="deal", now=T0)
        == 2
    )
    assert storage.add_candidates(D, ["B000000001", "B000000002"], source="deal", now=T0 + 1) == 0
    storage.commit_deals(D, [deal("B000000003")], T0)
    storage.reject_candidates(D, [Rejection("B000000004", "drop", "drop", {"value": 1})], T0)
    assert storage.add_candidates(D, ["B000000003", "B000000004"], source="deal", now=T0 + 2) == 0
    # A rejection older than the re-queue age lets the ASIN in again (and goes).
    assert (
        storage.add_candidates(
            D, ["B000000004"], source="deal", now=T0 + 100, requeue_rejected_after_s=50
        )
        == 1
    )
    assert table_rows(storage, "SELECT count(*) FROM rejections") == [(0,)]
    assert storage.totals(T0)["asins_seen"] == 4
    # The other domain is a different key.
    assert storage.add_candidates(2, ["B000000001"], source="deal", now=T0) == 1


def test_claims_expire_and_come_back(storage: Storage) -> None:
    storage.add_candidates(D, asins(5), source="deal", now=T0)
    first = storage.claim_candidates(D, "w1", 3, now=T0, ttl_s=10)
    second = storage.claim_candidates(D, "w2", 3, now=T0 + 1, ttl_s=10)
    assert len(first) == 3 and len(second) == 2 and not set(first) & set(second)
    assert storage.claim_candidates(D, "w3", 3, now=T0 + 2, ttl_s=10) == []
    assert storage.totals(T0 + 2)["candidates_claimed"] == 5
    # w1 died: at its expiry its claims come back, to someone else.
    back = storage.claim_candidates(D, "w3", 10, now=T0 + 10, ttl_s=10)
    assert sorted(back) == sorted(first)
    assert table_rows(storage, "SELECT DISTINCT claim_owner FROM candidates ORDER BY 1") == [
        ("w2",),
        ("w3",),
    ]


def test_release_gives_claims_back_at_once(storage: Storage) -> None:
    storage.add_candidates(D, asins(4), source="deal", now=T0)
    claimed = storage.claim_candidates(D, "w1", 4, now=T0, ttl_s=600)
    assert storage.release_candidates(D, "w2", claimed) == 0  # not w2's to give back
    assert storage.release_candidates(D, "w1", claimed[:2], count_attempt=False) == 2
    assert storage.claimable_candidates(D, T0) == 2
    assert table_rows(storage, f"SELECT attempts FROM candidates WHERE asin = '{claimed[0]}'") == [
        (0,)
    ]
    assert storage.release_candidates(D, "w1") == 2
    assert storage.claimable_candidates(D, T0) == 4


def test_renew_keeps_a_claim(storage: Storage) -> None:
    storage.add_candidates(D, asins(2), source="deal", now=T0)
    claimed = storage.claim_candidates(D, "w1", 2, now=T0, ttl_s=10)
    assert storage.renew_claims("candidates", D, "w1", claimed, now=T0 + 8, ttl_s=10) == 2
    assert storage.claim_candidates(D, "w2", 2, now=T0 + 12, ttl_s=10) == []
    assert len(storage.claim_candidates(D, "w2", 2, now=T0 + 18, ttl_s=10)) == 2


def test_a_candidate_claimed_too_often_is_rejected(storage: Storage) -> None:
    storage.add_candidates(D, ["B000000001"], source="deal", now=T0)
    for i in range(MAX_CLAIM_ATTEMPTS):
        assert storage.claim_candidates(D, "w", 1, now=T0 + i * 100, ttl_s=10) == ["B000000001"]
    assert storage.claim_candidates(D, "w", 1, now=T0 + 10_000, ttl_s=10) == []
    assert table_rows(storage, "SELECT asin, reason FROM rejections") == [
        ("B000000001", "attempts")
    ]
    assert storage.totals(T0)["candidates_waiting"] == 0


def _claim_until_empty(path: str, owner: str, barrier: Any, out: Any) -> None:
    """A claimer process: claim small batches until the queue is empty, finish half of each
    batch as deals (as a worker would), send back everything it claimed."""
    got: list[str] = []
    try:
        with Storage.open(path) as mine:
            barrier.wait()
            for _ in range(10_000):  # bounded
                batch = mine.claim_candidates(D, owner, 3, now=T0, ttl_s=600)
                if not batch:
                    break
                got.extend(batch)
                time.sleep(0.002)  # stands for the Keepa call between the claim and the commit
                mine.commit_deals(D, [deal(a) for a in batch[::2]], T0)
        out.put((owner, got, None))
    except BaseException as exc:
        out.put((owner, got, repr(exc)))


def _open_at_the_barrier(path: str, barrier: Any, out: Any) -> None:
    try:
        barrier.wait()
        Storage.open(path).close()
        out.put(None)
    except BaseException as exc:
        out.put(repr(exc))


def test_workers_started_together_all_open_a_new_database(tmp_path: Path) -> None:
    # Turning a new file to WAL answers "database is locked" at once, busy timeout or not,
    # while another process holds a lock on it: workers started together on a new database
    # (supervisord starts them so). Without the retry, about one round in ten failed.
    openers, rounds = 8, 40
    ctx = multiprocessing.get_context("fork")
    errors: list[str] = []
    for trial in range(rounds):
        path = str(tmp_path / f"fleet{trial}.db")
        barrier = ctx.Barrier(openers, timeout=20)
        out = ctx.Queue()
        procs = [
            ctx.Process(target=_open_at_the_barrier, args=(path, barrier, out))
            for _ in range(openers)
        ]
        errors += [e for e in _run_all(procs, out) if e is not None]
        if errors:
            break
    assert errors == []


def _run_all(procs: list[Any], out: Any) -> list[Any]:
    """Start ``procs``, collect one result each from ``out``, and join (or kill) them all."""
    for p in procs:
        p.start()
    try:
        return [out.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=20)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)


def test_two_processes_claiming_concurrently_never_share(tmp_path: Path) -> None:
    path = str(tmp_path / "fleet.db")
    total = 600
    with Storage.open(path) as s:
        s.add_candidates(D, asins(total), source="deal", now=T0)
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2, timeout=20)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_claim_until_empty, args=(path, o, barrier, out)) for o in ("a", "b")
    ]
    results = _run_all(procs, out)
    got = {owner: claimed for owner, claimed, _ in results}
    assert [err for _, _, err in results] == [None, None]
    assert got["a"] and got["b"], "both claimers got work"
    assert not set(got["a"]) & set(got["b"])
    assert sorted(got["a"] + got["b"]) == asins(total)
    with Storage.open(path) as s:
        assert s.integrity_check() == "ok"
        t = s.totals(T0)
        assert t["deals_live"] + t["candidates_claimed"] == total


def test_a_claim_waits_for_another_writer_instead_of_failing(tmp_path: Path) -> None:
    """The trap: a deferred read-then-write fails at once with "database is locked". A claim
    (BEGIN IMMEDIATE) waits for the other writer and then gets different candidates."""
    path = str(tmp_path / "fleet.db")
    with Storage.open(path) as a, Storage.open(path) as b:
        a.add_candidates(D, asins(10), source="deal", now=T0)
        result: list[list[str]] = []
        with a.transaction():
            first = a.claim_candidates(D, "a", 5, now=T0, ttl_s=60)  # nested: a savepoint
            thread = threading.Thread(
                target=lambda: result.append(b.claim_candidates(D, "b", 10, now=T0, ttl_s=60))
            )
            thread.start()
            thread.join(timeout=0.3)  # b is blocked on a's write lock
            assert thread.is_alive() and not result
        thread.join(timeout=20)
        assert not thread.is_alive()
        assert sorted(result[0]) == sorted(set(asins(10)) - set(first))


def test_a_nested_write_that_fails_is_undone_alone(storage: Storage) -> None:
    """A write inside ``transaction()`` is a savepoint: its failure undoes it, not what the
    outer transaction wrote before it, and the outer one still commits."""
    with storage.transaction():
        storage.add_candidates(D, asins(3), source="deal", now=T0)
        with pytest.raises(RuntimeError), storage._write():
            storage.add_candidates(D, asins(6)[3:], source="deal", now=T0)
            raise RuntimeError("the nested write fails")
        storage.set_state("after", 1, T0)
    assert storage.totals(T0)["candidates_waiting"] == 3
    assert storage.get_state("after") == 1
    assert not storage.conn.in_transaction


def test_a_worker_process_does_not_load_pandas() -> None:
    """sqlite-utils imports pandas when it is installed (the ``keepa`` package of the test
    extras brings it): the storage imports sqlite-utils only for ``Storage.db``, so a
    worker does not carry pandas (tens of MB a process)."""
    import subprocess
    import sys

    code = (
        "import sys, common.storage, workers.runtime, broker.server; "
        "print(sorted(m for m in ('pandas', 'numpy', 'sqlite_utils') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


# --- deals and rejections -------------------------------------------------------------


def test_commit_is_an_idempotent_upsert(storage: Storage) -> None:
    storage.add_candidates(D, ["B000000001"], source="deal", now=T0)
    storage.claim_candidates(D, "w", 1, now=T0, ttl_s=60)
    assert storage.commit_deals(D, [deal("B000000001", history="[1]")], T0) == 1
    assert storage.commit_deals(D, [deal("B000000001", current=900)], T0 + 5) == 1
    rows = table_rows(storage, "SELECT asin, current, first_seen, updated_at, history FROM deals")
    assert rows == [("B000000001", 900, T0, T0 + 5, "[1]")]  # history kept, first_seen kept
    t = storage.totals(T0 + 5)
    assert t["candidates_waiting"] == 0 and t["candidates_claimed"] == 0
    assert t["deals_live"] == 1 and t["deals_committed"] == 2


def test_rejections_carry_reasons_and_remove_candidates(storage: Storage) -> None:
    storage.add_candidates(D, asins(3), source="deal", now=T0)
    a, b, c = asins(3)
    storage.reject_candidates(
        D,
        [
            Rejection(a, "sales_rank", "sales_rank", {"value": 300_000, "max": 200_000}),
            Rejection(b, "not_found", "not_found", {}),
        ],
        T0,
    )
    storage.reject_candidates(D, [Rejection(a, "drop", "drop", {"value": 2.0})], T0 + 1)
    rows = table_rows(storage, "SELECT asin, reason, detail, times FROM rejections ORDER BY 1")
    assert rows == [(a, "drop", '{"value": 2.0}', 2), (b, "not_found", "{}", 1)]
    t = storage.totals(T0 + 1)
    assert t["rejections_by_reason"] == {"drop": 1, "not_found": 1}
    assert t["candidates_waiting"] == 1
    assert table_rows(storage, "SELECT asin FROM candidates") == [(c,)]


def test_refresh_claims_stalest_and_drop_records_reason(storage: Storage) -> None:
    for i, asin in enumerate(asins(4)):
        storage.commit_deals(D, [deal(asin)], T0 + i)
    claimed = storage.claim_stale_deals(D, "w", 2, now=T0 + 100, due_before=T0 + 2, ttl_s=60)
    assert claimed == asins(2)  # the two stalest
    assert storage.claim_stale_deals(D, "x", 9, now=T0 + 100, due_before=T0 + 2, ttl_s=60) == [
        asins(3)[2]
    ]
    kept, dropped = claimed
    assert storage.refresh_deals(D, [deal(kept, current=800)], T0 + 100) == 1
    assert (
        storage.drop_deals(
            D, [Rejection(dropped, "refresh:drop", "drop", {"value": 1.0})], T0 + 100
        )
        == 1
    )
    assert storage.get_deal(D, kept)["current"] == 800  # type: ignore[index]
    assert storage.get_deal(D, dropped) is None
    # A refresh of a deal dropped meanwhile does not bring it back.
    assert storage.refresh_deals(D, [deal(dropped)], T0 + 101) == 0
    t = storage.totals(T0 + 101)
    assert t["deals_live"] == 3 and t["deals_dropped"] == 1 and t["deals_refreshed"] == 1
    assert t["rejections_by_reason"] == {"refresh:drop": 1}
    assert storage.stalest_claimable_deal(D, T0 + 101) == T0 + 3  # asins(3)[2] still claimed
    assert storage.release_deals(D, "x") == 1
    assert storage.stalest_claimable_deal(D, T0 + 101) == T0 + 2


def test_every_seen_asin_is_accounted_for(storage: Storage) -> None:
    storage.add_candidates(D, asins(6), source="deal", now=T0)
    claimed = storage.claim_candidates(D, "w", 6, now=T0, ttl_s=60)
    storage.commit_deals(D, [deal(a) for a in claimed[:2]], T0)
    storage.reject_candidates(D, [Rejection(a, "drop", "drop", {}) for a in claimed[2:4]], T0)
    storage.release_candidates(D, "w", claimed[4:])
    lost = table_rows(
        storage,
        "SELECT count(*) FROM seen s WHERE NOT EXISTS (SELECT 1 FROM deals d WHERE "
        "d.domain = s.domain AND d.asin = s.asin) AND NOT EXISTS (SELECT 1 FROM rejections r "
        "WHERE r.domain = s.domain AND r.asin = s.asin) AND NOT EXISTS (SELECT 1 FROM "
        "candidates c WHERE c.domain = s.domain AND c.asin = s.asin)",
    )
    assert lost == [(0,)]
    assert storage.integrity_check() == "ok"


def test_the_query_that_found_each_asin_is_kept_and_counted(storage: Storage) -> None:
    """Issue 19's columns on both backends: each candidate names its query; totals per query."""
    storage.add_candidates(1, ["A1", "A2"], source="deals", now=1.0, query="used-books")
    storage.add_candidates(1, ["A3"], source="deals", now=1.0, query="toys")
    assert storage.queries_of("candidates", 1, ["A1", "A3", "ZZ"]) == {
        "A1": "used-books",
        "A3": "toys",
    }
    totals = storage.query_totals()
    assert totals["used-books"]["candidates_queued"] == 2
    assert totals["toys"]["candidates_queued"] == 1
    storage.add_query_counter("toys", "tokens", 5, now=2.0)
    storage.add_query_counter("toys", "tokens", 5, now=3.0)
    assert int(storage.get_state("query:toys:tokens", 0)) == 10
