"""``keepa-fleet db copy``: SQLite to PostgreSQL and back on a real cluster, every table and
column, all or nothing, a non-empty target refused unless ``--replace``, progress lines,
clear errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pg_support import PgCluster
from support import fleet_command

from common import db_copy
from common.db_copy import TABLES, CopyRefused, copy_database
from common.errors import StorageError
from common.storage import Rejection, Storage

D = 1
T0 = 1_700_000_000.0


def fill(target: str, n: int = 30) -> None:
    """A database with rows in every table: candidates (one claimed), deals with a price
    history and a query, rejections, refreshed deals, counters."""
    with Storage.open(target) as s:
        asins = [f"B{i:09d}" for i in range(n)]
        s.add_candidates(D, asins, source="deal", now=T0, query="books")
        s.add_candidates(2, ["B999999999"], source="deal", now=T0 + 0.25)
        s.claim_candidates(D, "w1", 2, now=T0 + 1, ttl_s=60)
        third = n // 3
        s.commit_deals(
            D,
            [
                {
                    "asin": a,
                    "title": f"title {a} \u00e9",
                    "price_type": 1,
                    "current": 1000 + i,
                    "avg90": 2000,
                    "drop_percent": 49.5,
                    "sales_rank": 12,
                    "offers": 3,
                    "profit": 700,
                    "raw": json.dumps({"asin": a}),
                    "history": "[[1, 2]]",
                    "query": "books",
                }
                for i, a in enumerate(asins[2 : 2 + third])
            ],
            T0 + 2.5,
        )
        s.reject_candidates(
            D,
            [
                Rejection(a, "drop", "drop", {"drop": 3.25})
                for a in asins[2 + third : 2 + 2 * third]
            ],
            T0 + 3,
        )
        s.set_state("deal_feed_watermark", {"1": 123456}, T0 + 4)


def dump(target: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in key order, values normalized across backends, without the
    database's own ``opened_at``."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with Storage.open(target) as s:
        for table, key in TABLES.items():
            rows = s._read(f"SELECT * FROM {table} ORDER BY {', '.join(key)}")
            out[table] = [
                tuple(
                    float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
                    for v in row
                )
                for row in rows
                if not (table == "state" and row[0] == "opened_at")
            ]
    return out


def test_sqlite_to_postgres_and_back_copies_every_row(tmp_path: Path, pg_url: str) -> None:
    sqlite_db = tmp_path / "fleet.db"
    fill(str(sqlite_db))
    lines: list[str] = []
    result = copy_database(f"sqlite:///{sqlite_db}", pg_url, progress=lines.append, now=T0 + 5)
    before = dump(str(sqlite_db))
    assert result.rows == {t: len(before[t]) + (t == "state") for t in TABLES}
    assert dump(pg_url) == before
    assert all(before[t] for t in TABLES)  # every table had rows to copy
    assert lines[0].startswith("warning: 2 claims in the source are live")  # claimed in fill
    assert [line.split(":")[0] for line in lines[1:]] == list(TABLES)

    # What was claimed stays claimed; what was copied works in the pipeline on PostgreSQL.
    with Storage.open(pg_url) as pg:
        assert pg.totals(T0 + 5)["candidates_claimed"] == 2
        assert pg.integrity_check() == "ok"
        assert pg.get_deal(D, "B000000002")["history"] == "[[1, 2]]"  # type: ignore[index]

    back = tmp_path / "back.db"
    copy_database(pg_url, str(back))
    assert dump(str(back)) == before


def test_a_non_empty_target_is_refused_unless_replace(tmp_path: Path, pg_url: str) -> None:
    sqlite_db = tmp_path / "fleet.db"
    fill(str(sqlite_db))
    copy_database(str(sqlite_db), pg_url)
    with Storage.open(pg_url) as pg:
        pg.add_candidates(D, ["B0NEWONE01"], source="deal", now=T0 + 9)
    with pytest.raises(CopyRefused, match=r"not empty \(.*candidates .*--replace"):
        copy_database(str(sqlite_db), pg_url)
    with Storage.open(pg_url) as pg:  # refused: nothing changed
        assert pg.totals(T0)["candidates_waiting"] + pg.totals(T0)["candidates_claimed"] > 0
        assert pg._read("SELECT count(*) FROM candidates WHERE asin = 'B0NEWONE01'")[0][0] == 1

    # --replace: the target ends as the source, and doing it again changes nothing.
    copy_database(str(sqlite_db), pg_url, replace=True)
    first = dump(pg_url)
    assert first == dump(str(sqlite_db))
    copy_database(str(sqlite_db), pg_url, replace=True)
    assert dump(pg_url) == first


def test_a_failed_copy_writes_nothing(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All or nothing: a failure in the last table leaves the target empty, so the same copy
    can simply be run again."""
    sqlite_db = tmp_path / "fleet.db"
    fill(str(sqlite_db))
    real = db_copy._write_rows

    def failing(storage: Storage, table: str, *args: Any) -> None:
        if table == "rejections":
            storage.conn.execute("SELECT 1 / 0")  # a real error of the server
        real(storage, table, *args)

    monkeypatch.setattr(db_copy, "_write_rows", failing)
    with pytest.raises(StorageError, match=r"nothing written.*division by zero"):
        copy_database(str(sqlite_db), pg_url)
    with Storage.open(pg_url) as pg:
        assert db_copy._non_empty(pg) == ""
    monkeypatch.setattr(db_copy, "_write_rows", real)
    copy_database(str(sqlite_db), pg_url)  # no --replace needed
    assert dump(pg_url) == dump(str(sqlite_db))


def test_long_copies_show_progress(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqlite_db = tmp_path / "fleet.db"
    fill(str(sqlite_db), n=300)
    ticks = iter(range(10_000))  # a clock that moves 1 s per reading: every batch is "long"
    monkeypatch.setattr(db_copy, "PROGRESS_EVERY_S", 1.0)
    lines: list[str] = []
    copy_database(
        str(sqlite_db), pg_url, batch=50, progress=lines.append, clock=lambda: next(ticks)
    )
    assert "seen: 50/301 rows" in lines and "seen: 301 rows" in lines


def test_bad_sources_and_targets_give_clear_errors(tmp_path: Path, pg_cluster: PgCluster) -> None:
    with pytest.raises(StorageError, match=r"no database at .*missing.db"):
        copy_database(str(tmp_path / "missing.db"), pg_cluster.url())
    fill(str(tmp_path / "fleet.db"))
    with pytest.raises(CopyRefused, match="both the source and the target"):
        copy_database(str(tmp_path / "fleet.db"), f"sqlite:///{tmp_path}/./fleet.db")
    nowhere = f"postgresql://postgres:secret@127.0.0.1:{pg_cluster.port}/no_such_db"
    with pytest.raises(StorageError) as err:
        copy_database(str(tmp_path / "fleet.db"), nowhere)
    assert "no_such_db" in str(err.value) and "secret" not in str(err.value)
    with pytest.raises(StorageError, match="not supported"):
        copy_database(str(tmp_path / "fleet.db"), "mysql://h/db")


def test_the_command_copies_and_refuses_a_second_time(tmp_path: Path, pg_url: str) -> None:
    sqlite_db = tmp_path / "fleet.db"
    fill(str(sqlite_db))
    env = {**os.environ, "FLEET_CONFIG": ""}

    def cli(*extra: str) -> subprocess.CompletedProcess[str]:
        argv = fleet_command("db", "copy", "--from", f"sqlite:///{sqlite_db}", "--to", pg_url)
        return subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=120, env=env)

    first = cli()
    assert first.returncode == 0, first.stderr
    assert "copied" in first.stdout and "deals 10" in first.stdout
    assert "candidates: 11 rows" in first.stderr
    again = cli()
    assert again.returncode == 1 and "not empty" in again.stderr and "--replace" in again.stderr
    assert cli("--replace").returncode == 0
