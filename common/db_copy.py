"""``keepa-fleet db copy --from SRC --to DST``: move a fleet's database to another backend.

Either side is an SQLite file (a path or ``sqlite:///PATH``) or a ``postgresql://`` URL, so
the usual move (SQLite to PostgreSQL, for workers on a second host) and the way back are the
same command. Stop the fleet first: a copy is a snapshot of the source.

* **Every table** of the schema (``TABLES``), every column, rows in key order. Both sides are
  opened (and so migrated) by ``Storage.open`` first: they end at the same schema version.
* **All or nothing**: the target's rows are written in one transaction; a copy that fails or
  is interrupted leaves the target as it was.
* **Refuses a non-empty target** (any pipeline row, or a state key besides the schema's own)
  unless ``--replace`` is given: then the target's rows are deleted in that same transaction
  and the copy replaces them. So running the same copy again with ``--replace`` leaves the
  same rows (the copy is idempotent); without it, nothing can be mixed by accident.
* **Progress**: one line per table, and for long tables one line at most every
  ``PROGRESS_EVERY_S`` seconds (rows done of rows in the table).
* Afterwards the row counts of both sides are compared and the target checked (an ASIN in at
  most one of candidates/deals/rejections); a mismatch is an error.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from common.errors import ConfigError, StorageError
from common.storage import Storage, is_postgres_url, sqlite_path
from common.storage_pg import PostgresStorage, redact

# table -> its primary key; the order rows are read in and the conflict target of the upsert.
TABLES: dict[str, tuple[str, ...]] = {
    "state": ("key",),
    "seen": ("domain", "asin"),
    "candidates": ("domain", "asin"),
    "deals": ("domain", "asin"),
    "rejections": ("domain", "asin"),
}
# State keys every freshly opened database has: they do not make a target "non-empty".
OWN_STATE_KEYS = ("schema_version", "opened_at")
BATCH_ROWS = 1000
PROGRESS_EVERY_S = 2.0

Progress = Callable[[str], None]


class CopyRefused(StorageError):
    """The copy cannot be done as asked (a non-empty target, the source as target)."""


@dataclass(frozen=True)
class CopyResult:
    rows: dict[str, int]  # table -> rows copied
    seconds: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    copy = sub.add_parser(
        "copy",
        help="copy every table of one database into another (SQLite <-> PostgreSQL)",
        description="Copy every table of the fleet's database into another one, in one "
        "transaction, e.g. --from sqlite:///var/fleet.db --to postgresql://fleet@dbhost/fleet. "
        "Stop the fleet first.",
    )
    copy.add_argument(
        "--from", dest="source", required=True, metavar="DB", help="the database to read"
    )
    copy.add_argument(
        "--to", dest="target", required=True, metavar="DB", help="the database to write"
    )
    copy.add_argument(
        "--replace",
        action="store_true",
        help="the target may hold rows: delete them and copy (default: refuse a non-empty target)",
    )
    copy.add_argument(
        "--batch",
        type=int,
        default=BATCH_ROWS,
        metavar="N",
        help=f"rows read and written at a time (default {BATCH_ROWS})",
    )


def run(args: argparse.Namespace) -> int:
    if args.db_command != "copy":  # argparse allows only "copy"; kept for a future action
        raise ConfigError("db", f"unknown action {args.db_command!r}")
    result = copy_database(
        args.source,
        args.target,
        replace=args.replace,
        batch=args.batch,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    total = sum(result.rows.values())
    print(
        f"copied {total} rows ({', '.join(f'{t} {n}' for t, n in result.rows.items())}) "
        f"from {describe(args.source)} to {describe(args.target)} in {result.seconds:.1f} s"
    )
    return 0


def describe(target: str) -> str:
    return redact(target) if is_postgres_url(target) else sqlite_path(target)


def same_database(a: str, b: str) -> bool:
    if is_postgres_url(a) or is_postgres_url(b):
        return is_postgres_url(a) and is_postgres_url(b) and redact(a) == redact(b)
    pa, pb = Path(sqlite_path(a)), Path(sqlite_path(b))
    return pa.resolve() == pb.resolve()


def copy_database(
    source: str,
    target: str,
    *,
    replace: bool = False,
    batch: int = BATCH_ROWS,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.monotonic,
    now: float | None = None,
) -> CopyResult:
    """Copy every table of ``source`` into ``target`` (see the module's text). Raises
    CopyRefused (nothing written) for a non-empty target without ``replace`` or the source as
    its own target, StorageError when either side cannot be opened, read or written."""
    if batch < 1:
        raise ConfigError("--batch", f"{batch} is not a positive number of rows")
    if same_database(source, target):
        raise CopyRefused(f"{describe(source)} is both the source and the target")
    say = progress or (lambda line: None)
    started = clock()
    if not is_postgres_url(source) and not Path(sqlite_path(source)).is_file():
        raise StorageError(f"no database at {sqlite_path(source)} (the source must exist)")
    with Storage.open(source) as src, Storage.open(target) as dst:
        if src.schema_version() != dst.schema_version():  # both migrated: cannot differ
            raise StorageError(
                f"schema versions differ: {src.schema_version()} and {dst.schema_version()}"
            )
        live = _live_claims(src, time.time() if now is None else now)
        if live:
            say(
                f"warning: {live} claims in the source are live: is the fleet still running? "
                "(they are copied as they are and expire in the target)"
            )
        try:
            rows = _copy(src, dst, replace=replace, batch=batch, say=say, clock=clock)
        except (psycopg.Error, sqlite3.Error) as exc:
            raise StorageError(
                f"copy into {dst.path} failed, nothing written: {_first_line(exc)}"
            ) from None
        _verify(src, dst, rows)
    return CopyResult(rows, round(clock() - started, 3))


def _copy(
    src: Storage,
    dst: Storage,
    *,
    replace: bool,
    batch: int,
    say: Progress,
    clock: Callable[[], float],
) -> dict[str, int]:
    done: dict[str, int] = {}
    with dst._write():
        held = _non_empty(dst)
        if held and not replace:
            raise CopyRefused(
                f"the target {dst.path} is not empty ({held}): give --replace to delete its "
                "rows and copy, or choose an empty database"
            )
        if held:
            for table in TABLES:
                dst.conn.execute(f"DELETE FROM {table}")
            say(f"target emptied ({held})")
        for table, key in TABLES.items():
            total = int(src._read(f"SELECT count(*) FROM {table}")[0][0])
            n = 0
            last = clock()
            for columns, chunk in _read_table(src, table, key, batch):
                _write_rows(dst, table, key, columns, chunk)
                n += len(chunk)
                if clock() - last >= PROGRESS_EVERY_S and n < total:
                    say(f"{table}: {n}/{total} rows")
                    last = clock()
            done[table] = n
            say(f"{table}: {n} rows")
    return done


def _live_claims(storage: Storage, now: float) -> int:
    return sum(
        int(storage._read(f"SELECT count(*) FROM {t} WHERE claim_expires > ?", (now,))[0][0])
        for t in ("candidates", "deals")
    )


def _non_empty(storage: Storage) -> str:
    """'' for a database without fleet data, else what it holds."""
    found = []
    for table in TABLES:
        if table == "state":
            marks = ", ".join("?" * len(OWN_STATE_KEYS))
            sql = f"SELECT count(*) FROM state WHERE key NOT IN ({marks})"
            n = int(storage.conn.execute(sql, OWN_STATE_KEYS).fetchone()[0])
        else:
            n = int(storage.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        if n:
            found.append(f"{table} {n}")
    return ", ".join(found)


def _read_table(
    storage: Storage, table: str, key: Sequence[str], batch: int
) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
    """The rows of ``table`` in key order, ``batch`` at a time, with the column names."""
    sql = f"SELECT * FROM {table} ORDER BY {', '.join(key)}"
    if isinstance(storage, PostgresStorage):
        raw = storage.conn.raw
        with raw.transaction(), raw.cursor(name=f"copy_{table}") as cur:
            cur.itersize = batch
            cur.execute(sql)
            columns: list[str] | None = None
            while chunk := cur.fetchmany(batch):
                columns = columns or [d.name for d in cur.description or ()]
                yield columns, chunk
        return
    cur = storage.conn.execute(sql)
    names = [d[0] for d in cur.description]
    while chunk := cur.fetchmany(batch):
        yield names, chunk


def _write_rows(
    storage: Storage,
    table: str,
    key: Sequence[str],
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    others = [c for c in columns if c not in key]
    updates = ", ".join(f"{c} = excluded.{c}" for c in others)
    conflict = f"DO UPDATE SET {updates}" if others else "DO NOTHING"
    if isinstance(storage, PostgresStorage):
        marks = ", ".join(["%s"] * len(columns))
        sql = (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(key)}) {conflict}"
        )
        with storage.conn.raw.cursor() as cur:
            cur.executemany(sql, rows)
        return
    marks = ", ".join("?" * len(columns))
    storage.conn.executemany(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "
        f"ON CONFLICT ({', '.join(key)}) {conflict}",
        rows,
    )


def _verify(src: Storage, dst: Storage, rows: dict[str, int]) -> None:
    for table in TABLES:
        want = int(src._read(f"SELECT count(*) FROM {table}")[0][0])
        got = int(dst._read(f"SELECT count(*) FROM {table}")[0][0])
        if got != want or rows[table] != want:
            raise StorageError(
                f"after the copy {table} has {got} rows in {dst.path}, {want} in {src.path}"
            )
    check = dst._one_table_check()
    if check != "ok":
        raise StorageError(f"the copy in {dst.path} fails the pipeline's check: {check}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
