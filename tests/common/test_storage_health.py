"""``common.storage_health.classify`` on the errors real SQLite raises (a full database, a
read-only connection, a lock held past the busy timeout) and on others."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from common.errors import StorageUnavailable
from common.storage_health import classify


def _db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=0.05)
    conn.execute("CREATE TABLE IF NOT EXISTS t (x TEXT)")
    return conn


def test_a_full_database_is_disk_full(tmp_path: Path) -> None:
    conn = _db(tmp_path / "a.db")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(sqlite3.Error) as info:
        conn.execute("INSERT INTO t VALUES (?)", ("x" * 100_000,))
    assert classify(info.value) == "disk_full"


def test_a_read_only_database_is_read_only(tmp_path: Path) -> None:
    _db(tmp_path / "b.db").close()
    conn = sqlite3.connect(f"file:{tmp_path / 'b.db'}?mode=ro", uri=True)
    with pytest.raises(sqlite3.Error) as info:
        conn.execute("INSERT INTO t VALUES ('x')")
    assert classify(info.value) == "read_only"


def test_a_lock_past_the_busy_timeout_is_locked(tmp_path: Path) -> None:
    holder = _db(tmp_path / "c.db")
    other = _db(tmp_path / "c.db")
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.Error) as info:
        other.execute("BEGIN IMMEDIATE")
    holder.execute("ROLLBACK")
    assert classify(info.value) == "locked"


def test_other_errors_are_not_the_storages() -> None:
    conn = sqlite3.connect(":memory:")
    with pytest.raises(sqlite3.Error) as info:
        conn.execute("SELECT * FROM no_such_table")
    assert classify(info.value) is None
    assert classify(ValueError("a bug")) is None
    assert classify(StorageUnavailable("server gone")) == "unavailable"
    assert classify(OSError(errno.ENOSPC, "No space left on device")) == "disk_full"
    assert classify(OSError(errno.EROFS, "Read-only file system")) == "read_only"
    assert classify(OSError(errno.ENOENT, "gone")) is None


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        self.sqlstate = sqlstate


def test_postgresql_sqlstates() -> None:
    assert classify(_PgError("53100")) == "disk_full"
    assert classify(_PgError("25006")) == "read_only"
    assert classify(_PgError("23505")) is None  # a unique violation: the data's, not storage
