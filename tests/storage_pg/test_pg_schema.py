"""The schema on PostgreSQL: the same migration list as SQLite, a version in ``state``, an old
database migrated in place with its rows kept, a newer one refused, concurrent openers
migrating once, and the same tables and columns as on SQLite."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from common.errors import StorageError
from common.storage import MIGRATIONS, SCHEMA_VERSION, Storage
from common.storage_pg import PostgresStorage

D = 1
T0 = 1_700_000_000.0


class VersionOne(PostgresStorage):
    """The program as it was at schema version 1 (before the deal queries' columns)."""

    migrations = MIGRATIONS[:1]


def columns_pg(s: Storage, table: str) -> list[str]:
    rows = s._read(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
        "AND table_schema = current_schema() ORDER BY ordinal_position",
        (table,),
    )
    return [r[0] for r in rows]


def test_an_old_database_is_migrated_in_place(pg_url: str) -> None:
    assert SCHEMA_VERSION >= 2, "this test needs a migration after version 1"
    with VersionOne.open_url(pg_url) as old:
        assert old.schema_version() == 1
        assert "query" not in columns_pg(old, "candidates")
        old.conn.execute(
            "INSERT INTO candidates (domain, asin, added_at) VALUES (?, ?, ?)",
            (D, "B0OLD00001", T0),
        )
    with Storage.open(pg_url) as new:
        assert new.schema_version() == SCHEMA_VERSION
        assert "query" in columns_pg(new, "candidates") and "query" in columns_pg(new, "deals")
        assert new.queries_of("candidates", D, ["B0OLD00001"]) == {"B0OLD00001": ""}
        assert new.claim_candidates(D, "w", 5, now=T0, ttl_s=60) == ["B0OLD00001"]
    with Storage.open(pg_url) as again:  # opening again migrates nothing
        assert again.schema_version() == SCHEMA_VERSION


def test_a_newer_database_is_refused(pg_url: str) -> None:
    with Storage.open(pg_url) as s:
        s.set_state("schema_version", SCHEMA_VERSION + 1, T0)
    with pytest.raises(StorageError, match="newer than this program"):
        Storage.open(pg_url)


def test_concurrent_openers_migrate_once(pg_url: str) -> None:
    """Eight processes' worth of openers at once on an empty database: the migration lock
    lets one create the tables; none fails, all see the newest version."""
    errors: list[BaseException] = []
    versions: list[int] = []
    start = threading.Barrier(8)

    def opener() -> None:
        try:
            start.wait(timeout=30)
            with Storage.open(pg_url) as s:
                versions.append(s.schema_version())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert versions == [SCHEMA_VERSION] * 8


def test_same_tables_and_columns_as_sqlite(pg_url: str, tmp_path: Path) -> None:
    with Storage.open(str(tmp_path / "fleet.db")) as lite, Storage.open(pg_url) as pg:
        for table in ("state", "candidates", "deals", "rejections", "seen"):
            names = [r[1] for r in lite._read(f"PRAGMA table_info({table})")]
            assert columns_pg(pg, table) == names, table
