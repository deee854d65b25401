"""The pipeline's database: a claimable candidate queue, the live deals, the rejections.

Two backends behind one interface (``Storage``): SQLite, the embedded default for one host
(this module), and PostgreSQL for workers on several hosts (``common.storage_pg``: claims with
``FOR UPDATE SKIP LOCKED``, connection loss retried). ``Storage.open(target)`` takes a file
path, ``sqlite:///PATH`` or a ``postgresql://`` URL (``FLEET_DB``/``--db``). The tables, their
columns and their meanings are the same on both.

SQLite:

One file in WAL mode, opened through sqlite-utils on a connection of our own (busy timeout
``BUSY_TIMEOUT_S``, driver autocommit so that every transaction is explicit). Every write is a
short ``BEGIN IMMEDIATE`` transaction: a deferred transaction that reads and then writes gets
"database is locked" at once when another process writes, busy timeout or not. Turning a
new file to WAL is the other such case (``_set_wal``: several workers started together on a
new database), so it is retried up to the busy timeout. Writes are idempotent upserts keyed
by ``(domain, asin)``, so a batch done twice leaves the same rows.

Why the statements are SQL written here and not sqlite-utils calls (``table.upsert``,
``table.create``, ``rows_where``): every statement of this class is also the PostgreSQL
backend's (``common.storage_pg`` subclasses ``Storage`` and runs the same statements through
its own connection; the migrations are mapped by ``pg_ddl``), and sqlite-utils speaks only
SQLite. The claims also need ``BEGIN IMMEDIATE`` (see above), which sqlite-utils does not
open. sqlite-utils is used for what is SQLite's alone: the ``Database`` on our connection and
its savepoints (``atomic``) inside an open transaction.

Tables (plain SQLite types, JSON as TEXT, times as epoch seconds: the file opens in
sqlite-utils or Datasette without any project code):

===============  ==========================================================================
table            rows
===============  ==========================================================================
``candidates``   ASINs waiting for ingest; ``claim_owner``/``claim_expires`` mark a claim, a
                 claim whose owner died comes back when it expires
``deals``        the live deals (filter figures, the newest product JSON, the price history
                 from the commit call); refresh claims them the same way
``rejections``   one row per ASIN that did not qualify: ``reason`` (the filter's name, or
                 ``refresh:<filter>`` when a live deal stopped qualifying) and its figures
``seen``         every ASIN ever queued: each ends as a deal, a rejection or still queued
``state``        small JSON values: ``schema_version``, the deal-feed watermark, counters
===============  ==========================================================================

A finished candidate leaves ``candidates`` in the same transaction that writes its deal or its
rejection, so none is ever lost, and an ASIN is in exactly one of candidates/deals/rejections.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import StorageError
from common.schema import MIGRATIONS, SCHEMA_VERSION, add_column
from common.storage_deals import DealRows
from common.storage_reads import StorageReads, _marks

if TYPE_CHECKING:
    import sqlite_utils

__all__ = [
    "MAX_CLAIM_ATTEMPTS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Rejection",
    "Storage",
    "add_column",
]

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0
# A candidate claimed this many times without being finished is rejected ("attempts"), so a
# poison ASIN cannot cycle forever.
MAX_CLAIM_ATTEMPTS = 5


@dataclass(frozen=True)
class Rejection:
    """Why one ASIN did not qualify. ``reason`` is what status counts (``refresh:<filter>``
    for a deal dropped by refresh); ``filter`` the bare filter name; ``detail`` its figures."""

    asin: str
    reason: str
    filter: str
    detail: Mapping[str, Any]


def is_postgres_url(target: str) -> bool:
    return target.startswith(POSTGRES_SCHEMES)


POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SQLITE_SCHEME = "sqlite:///"


def sqlite_path(target: str) -> str:
    """The file of an SQLite target: a plain path, or ``sqlite:///relative`` /
    ``sqlite:////absolute`` (SQLAlchemy's spelling). Any other ``scheme://`` is refused."""
    if target.startswith(SQLITE_SCHEME):
        path = target[len(SQLITE_SCHEME) :]
        if not path:
            raise StorageError(f"{target!r} names no file (sqlite:///var/fleet.db)")
        return path
    if "://" in target:
        scheme = target.split("://", 1)[0]
        raise StorageError(
            f"database {scheme}://... is not supported: use an SQLite file path "
            "(or sqlite:///PATH) or a postgresql:// URL"
        )
    return target


class Storage(DealRows, StorageReads):
    """The database of one process. Methods are short transactions; safe to share between the
    threads of one process (a lock serializes them), and between processes (SQLite locks).

    This class is the storage interface and its SQLite backend; ``common.storage_pg``'s
    ``PostgresStorage`` is the PostgreSQL one (same tables, same meanings), overriding the
    few backend hooks. ``Storage.open`` picks the backend from its argument.
    """

    migrations = MIGRATIONS  # a class attribute so a test can add a step

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self.path = path
        self.conn: Any = conn  # sqlite3 here; PostgresStorage's has the same face
        self._lock = threading.RLock()
        self._savepoints = itertools.count(1)

    @functools.cached_property
    def db(self) -> sqlite_utils.Database:
        """The same connection as an ``sqlite_utils.Database``, for ad-hoc queries (tests,
        a user's own scripts). Imported on first use: sqlite-utils imports pandas when it
        is installed, tens of MB in every worker that never needs it."""
        import sqlite_utils

        return sqlite_utils.Database(self.conn)

    # --- opening ------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path) -> Storage:
        """Open (creating it and its parent directory when needed) and migrate the database:
        an SQLite file path (or ``sqlite:///PATH``), or a ``postgresql://`` URL.

        Raises StorageError with the path and the reason when it cannot be created, opened or
        written.
        """
        if isinstance(path, str) and is_postgres_url(path):
            from common.storage_pg import PostgresStorage

            return PostgresStorage.open_url(path)
        path = sqlite_path(str(path))
        target = Path(path)
        if target.is_dir():
            raise StorageError(f"database path {path} is a directory, not a file")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create the directory {target.parent} for the database {path}: "
                f"{exc.strerror or exc}"
            ) from None
        try:
            conn = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the database {path}: {exc}") from None
        storage = cls(conn, path)
        try:
            storage._configure()
            storage._migrate(time.time())
        except sqlite3.Error as exc:
            conn.close()
            raise StorageError(
                f"cannot use the database {path}: {exc} (is it an SQLite file in a writable "
                "directory?)"
            ) from None
        return storage

    def _configure(self) -> None:
        mode = self._set_wal()
        if mode.lower() != "wal":
            log.warning("database %s: journal mode is %s, not WAL", self.path, mode)
        self.conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        self.conn.execute("PRAGMA synchronous=NORMAL")

    def _set_wal(self) -> str:
        """``PRAGMA journal_mode=WAL``, the mode it left. Switching a new file needs its
        exclusive lock, and SQLite answers "database is locked" at once, without the busy
        handler, while another connection holds any lock on it: retried until
        ``BUSY_TIMEOUT_S``, as a busy handler would."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        delay = 0.005
        while True:
            try:
                return str(self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(2 * delay, 0.1)

    def _migrate(self, now: float) -> None:
        with self._write():
            self._lock_for_migration()
            self.conn.execute(self._ddl(self.migrations[0][1][0]))  # the state table: version
            row = self.conn.execute(
                "SELECT value FROM state WHERE key = 'schema_version'"
            ).fetchone()
            current = int(row[0]) if row else 0
            newest = self.migrations[-1][0]
            if current > newest:
                raise StorageError(
                    f"database {self.path} has schema version {current}, newer than this "
                    f"program's {newest}: upgrade keepa-fleet"
                )
            for version, statements in self.migrations:
                if version <= current:
                    continue
                for sql in statements:
                    self.conn.execute(self._ddl(sql))
                self._set_state("schema_version", version, now)
                log.info("database %s: schema migrated to version %d", self.path, version)
            # Always one write, so an unwritable file fails here, at start, not mid-batch.
            self._set_state("opened_at", now, now)

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Storage({self.path!r})"

    # --- transactions -------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """A write transaction for callers that read and then write (the deal-feed watermark):
        it holds the database's write lock from its first statement, so no other writer moves
        what it read. On SQLite that is ``_write()`` itself."""
        with self._write():
            yield self

    @contextlib.contextmanager
    def _write(self) -> Iterator[Any]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception).

        IMMEDIATE takes the write lock up front (waiting up to the busy timeout), so a
        transaction that reads and then writes never fails half-way with "database is locked".
        Nested calls become savepoints.
        """
        with self._lock:
            if self.conn.in_transaction:
                with self._savepoint():
                    yield self
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            else:
                self.conn.execute("COMMIT")

    @contextlib.contextmanager
    def _savepoint(self) -> Iterator[None]:
        """A savepoint in the open transaction: undone alone on an exception. (An error
        such as SQLITE_FULL may have rolled back the whole transaction already: then there
        is no savepoint left to undo, and the error is what the caller sees.)"""
        name = f"sp_{next(self._savepoints)}"
        self.conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute(f"ROLLBACK TO {name}")
                self.conn.execute(f"RELEASE {name}")
            raise
        else:
            self.conn.execute(f"RELEASE {name}")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

    # --- state --------------------------------------------------------------------------

    def schema_version(self) -> int:
        return int(self.get_state("schema_version", 0))

    def get_state(self, key: str, default: Any = None) -> Any:
        rows = self._read("SELECT value FROM state WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def set_state(self, key: str, value: Any, now: float) -> None:
        with self._write():
            self._set_state(key, value, now)

    def _set_state(self, key: str, value: Any, now: float) -> None:
        self.conn.execute(
            "INSERT INTO state (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
            "updated_at = excluded.updated_at",
            (key, json.dumps(value), now),
        )

    def _add_counter(self, key: str, n: int, now: float) -> None:
        if n:
            self.conn.execute(self._COUNTER_SQL, (key, json.dumps(n), now))

    # --- candidates ---------------------------------------------------------------------

    def add_candidates(
        self,
        domain: int,
        asins: Iterable[str],
        *,
        source: str,
        now: float,
        requeue_rejected_after_s: float | None = None,
        query: str = "",
    ) -> int:
        """Queue ASINs; returns how many were newly queued.

        Idempotent: an ASIN already queued or already a live deal is left alone (refresh
        looks after deals). A rejected ASIN is queued again only when its rejection is older
        than ``requeue_rejected_after_s`` (None: never); its rejection row then goes, so the
        ASIN is in exactly one table.
        """
        unique = list(dict.fromkeys(a.strip().upper() for a in asins if a and a.strip()))
        if not unique:
            return 0
        added = 0
        with self._write():
            self._lock_asins(domain, unique)
            for asin in unique:
                key = (domain, asin)
                self.conn.execute(
                    "INSERT INTO seen (domain, asin, source, first_seen, last_seen) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (domain, asin) DO UPDATE SET "
                    "last_seen = excluded.last_seen, times = seen.times + 1",
                    (*key, source, now, now),
                )
                if self.conn.execute(
                    "SELECT 1 FROM deals WHERE domain = ? AND asin = ?", key
                ).fetchone():
                    continue
                rejected = self.conn.execute(
                    "SELECT at FROM rejections WHERE domain = ? AND asin = ?", key
                ).fetchone()
                if rejected is not None:
                    if requeue_rejected_after_s is None:
                        continue
                    if rejected[0] > now - requeue_rejected_after_s:
                        continue
                cur = self.conn.execute(
                    "INSERT INTO candidates (domain, asin, added_at, source, query) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (domain, asin) DO NOTHING",
                    (*key, now, source, query),
                )
                if cur.rowcount:
                    added += 1
                    if rejected is not None:
                        self.conn.execute(
                            "DELETE FROM rejections WHERE domain = ? AND asin = ?", key
                        )
        return added

    def claim_candidates(
        self, domain: int, owner: str, limit: int, *, now: float, ttl_s: float
    ) -> list[str]:
        """Claim up to ``limit`` queued candidates (oldest first) for ``ttl_s`` seconds.

        Unclaimed candidates and those whose claim expired are claimable. Two claimers never
        get the same candidate (the claim is one IMMEDIATE transaction). A candidate claimed
        ``MAX_CLAIM_ATTEMPTS`` times already is rejected ("attempts") instead.
        """
        if limit <= 0:
            return []
        with self._write():
            poisoned = self.conn.execute(
                "SELECT asin, attempts FROM candidates WHERE domain = ? AND attempts >= ? "
                "AND (claim_owner IS NULL OR claim_expires <= ?)",
                (domain, MAX_CLAIM_ATTEMPTS, now),
            ).fetchall()
            if poisoned:
                log.warning("rejecting %d candidates claimed too often", len(poisoned))
                self._reject(
                    domain,
                    [Rejection(a, "attempts", "attempts", {"attempts": n}) for a, n in poisoned],
                    now,
                )
            rows = self.conn.execute(
                "UPDATE candidates SET claim_owner = ?, claim_expires = ?, "
                "attempts = attempts + 1 WHERE rowid IN (SELECT rowid FROM candidates "
                "WHERE domain = ? AND (claim_owner IS NULL OR claim_expires <= ?) "
                "ORDER BY added_at, asin LIMIT ?) RETURNING asin, added_at",
                (owner, now + ttl_s, domain, now, limit),
            ).fetchall()
        rows.sort(key=lambda r: (r[1], r[0]))
        return [r[0] for r in rows]

    def renew_claims(
        self, table: str, domain: int, owner: str, asins: Sequence[str], *, now: float, ttl_s: float
    ) -> int:
        """Push back the expiry of claims still held by ``owner``; returns how many."""
        if table not in ("candidates", "deals"):
            raise ValueError(f"no claims in table {table!r}")
        if not asins:
            return 0
        with self._write():
            cur = self.conn.execute(
                f"UPDATE {table} SET claim_expires = ? WHERE domain = ? AND claim_owner = ? "
                f"AND asin IN ({_marks(asins)})",
                (now + ttl_s, domain, owner, *asins),
            )
            return cur.rowcount

    def release_candidates(
        self,
        domain: int,
        owner: str,
        asins: Sequence[str] | None = None,
        *,
        count_attempt: bool = True,
    ) -> int:
        """Give back claims (all of ``owner``'s when ``asins`` is None): they are queued again.
        ``count_attempt=False`` when the work was not tried (a shutdown), not failed."""
        undo = 0 if count_attempt else 1
        with self._write():
            if asins is None:
                cur = self.conn.execute(
                    "UPDATE candidates SET claim_owner = NULL, claim_expires = NULL, "
                    f"attempts = {self._GREATEST}(attempts - ?, 0) "
                    "WHERE domain = ? AND claim_owner = ?",
                    (undo, domain, owner),
                )
            elif not asins:
                return 0
            else:
                cur = self.conn.execute(
                    "UPDATE candidates SET claim_owner = NULL, claim_expires = NULL, "
                    f"attempts = {self._GREATEST}(attempts - ?, 0) "
                    f"WHERE domain = ? AND claim_owner = ? AND asin IN ({_marks(asins)})",
                    (undo, domain, owner, *asins),
                )
            return cur.rowcount

    def reject_candidates(self, domain: int, rejections: Sequence[Rejection], now: float) -> int:
        """Record rejections and remove those candidates, in one transaction."""
        if not rejections:
            return 0
        with self._write():
            self._reject(domain, rejections, now)
        return len(rejections)

    def _reject(self, domain: int, rejections: Sequence[Rejection], now: float) -> None:
        self._lock_asins(domain, [r.asin for r in rejections])
        for r in rejections:
            key = (domain, r.asin)
            self.conn.execute(
                "INSERT INTO rejections (domain, asin, reason, filter, detail, at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (domain, asin) DO UPDATE SET "
                "reason = excluded.reason, filter = excluded.filter, "
                "detail = excluded.detail, at = excluded.at, times = rejections.times + 1",
                (*key, r.reason, r.filter, json.dumps(dict(r.detail), sort_keys=True), now),
            )
            self.conn.execute("DELETE FROM candidates WHERE domain = ? AND asin = ?", key)
            self.conn.execute("DELETE FROM deals WHERE domain = ? AND asin = ?", key)
        self._add_counter("rejections_recorded", len(rejections), now)

    def add_query_counter(self, query: str, name: str, n: int, now: float) -> None:
        """Add ``n`` to the counter ``query:<query>:<name>`` (tokens, deals found, ...)."""
        if n:
            with self.transaction():
                self._add_counter(f"query:{query}:{name}", n, now)

    # --- backend hooks (the PostgreSQL backend overrides these) -----------------------------

    _GREATEST = "max"  # SQLite's two-argument max() is GREATEST elsewhere
    _COUNTER_SQL = (
        "INSERT INTO state (key, value, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET "
        "value = CAST(state.value AS INTEGER) + CAST(excluded.value AS INTEGER), "
        "updated_at = excluded.updated_at"
    )

    def _ddl(self, sql: str) -> str:
        return sql  # the migrations are written for SQLite

    def _lock_for_migration(self) -> None:
        """Only one process migrates at a time (SQLite: the IMMEDIATE write lock does it)."""

    def _lock_asins(self, domain: int, asins: Sequence[str]) -> None:
        """Serialize writers of the same ASINs. A no-op on SQLite: ``BEGIN IMMEDIATE`` already
        lets one writer at a time in."""
