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
"database is locked" at once when another process writes, busy timeout or not. Writes are
idempotent upserts keyed by ``(domain, asin)``, so a batch done twice leaves the same rows.

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
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from common.errors import StorageError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0
# A candidate claimed this many times without being finished is rejected ("attempts"), so a
# poison ASIN cannot cycle forever.
MAX_CLAIM_ATTEMPTS = 5


def add_column(table: str, column: str, sql_type: str, default: str | None = None) -> str:
    """The migration statement of an additive column, the same on both backends (write the
    SQLite type: INTEGER, REAL, TEXT; PostgreSQL gets BIGINT, DOUBLE PRECISION, TEXT)::

        (2, (add_column("deals", "query", "TEXT"),)),
    """
    tail = f" DEFAULT {default}" if default is not None else ""
    return f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}{tail}"


# Each entry upgrades the schema from the previous version; never edit a released entry, add
# one (an additive column: ``add_column`` above). The statements are written in SQLite's types;
# ``common.storage_pg`` maps them to PostgreSQL's (``pg_ddl``), so one list serves both.
MIGRATIONS: list[tuple[int, tuple[str, ...]]] = [
    (
        1,
        (
            """CREATE TABLE IF NOT EXISTS state (
                key TEXT PRIMARY KEY,
                value TEXT NOT NULL,
                updated_at REAL NOT NULL
            )""",
            """CREATE TABLE IF NOT EXISTS candidates (
                domain INTEGER NOT NULL,
                asin TEXT NOT NULL,
                added_at REAL NOT NULL,
                source TEXT NOT NULL DEFAULT '',
                claim_owner TEXT,
                claim_expires REAL,
                attempts INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (domain, asin)
            )""",
            "CREATE INDEX IF NOT EXISTS candidates_queue ON candidates (domain, added_at)",
            """CREATE TABLE IF NOT EXISTS deals (
                domain INTEGER NOT NULL,
                asin TEXT NOT NULL,
                title TEXT,
                price_type INTEGER,
                current INTEGER,
                avg90 INTEGER,
                drop_percent REAL,
                sales_rank INTEGER,
                offers INTEGER,
                profit INTEGER,
                first_seen REAL NOT NULL,
                updated_at REAL NOT NULL,
                refreshes INTEGER NOT NULL DEFAULT 0,
                claim_owner TEXT,
                claim_expires REAL,
                raw TEXT,
                history TEXT,
                PRIMARY KEY (domain, asin)
            )""",
            "CREATE INDEX IF NOT EXISTS deals_staleness ON deals (domain, updated_at)",
            """CREATE TABLE IF NOT EXISTS rejections (
                domain INTEGER NOT NULL,
                asin TEXT NOT NULL,
                reason TEXT NOT NULL,
                filter TEXT NOT NULL,
                detail TEXT,
                at REAL NOT NULL,
                times INTEGER NOT NULL DEFAULT 1,
                PRIMARY KEY (domain, asin)
            )""",
            "CREATE INDEX IF NOT EXISTS rejections_reason ON rejections (reason)",
            """CREATE TABLE IF NOT EXISTS seen (
                domain INTEGER NOT NULL,
                asin TEXT NOT NULL,
                source TEXT NOT NULL DEFAULT '',
                first_seen REAL NOT NULL,
                last_seen REAL NOT NULL,
                times INTEGER NOT NULL DEFAULT 1,
                PRIMARY KEY (domain, asin)
            )""",
        ),
    ),
    # issue 19 (deal queries): which query found each candidate and deal ('' = before queries).
    (
        2,
        (
            "ALTER TABLE candidates ADD COLUMN query TEXT DEFAULT ''",
            "ALTER TABLE deals ADD COLUMN query TEXT DEFAULT ''",
        ),
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

# Columns of ``deals`` a commit or a refresh writes (besides the keys and the bookkeeping).
DEAL_FIELDS = (
    "title",
    "price_type",
    "current",
    "avg90",
    "drop_percent",
    "sales_rank",
    "offers",
    "profit",
    "raw",
    "query",  # the deal query that found it (issue 19)
)


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


class Storage:
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
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()

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
        mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("database %s: journal mode is %s, not WAL", self.path, mode)
        self.conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        self.conn.execute("PRAGMA synchronous=NORMAL")

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
        with self._write() as db:
            yield db

    @contextlib.contextmanager
    def _write(self) -> Iterator[Any]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception).

        IMMEDIATE takes the write lock up front (waiting up to the busy timeout), so a
        transaction that reads and then writes never fails half-way with "database is locked".
        Nested calls (and sqlite-utils calls made inside) become savepoints.
        """
        with self._lock:
            if self.conn.in_transaction:
                with self.db.atomic():  # a savepoint in the open transaction
                    yield self.db
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            else:
                self.conn.execute("COMMIT")

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

    # --- deals --------------------------------------------------------------------------

    def commit_deals(self, domain: int, deals: Sequence[Mapping[str, Any]], now: float) -> int:
        """Upsert deals (``asin`` plus DEAL_FIELDS, optional ``history``) and remove their
        candidates and any old rejection, in one transaction. ``first_seen`` is kept."""
        if not deals:
            return 0
        with self._write():
            self._lock_asins(domain, [d["asin"] for d in deals])
            for deal in deals:
                self._upsert_deal(domain, deal, now)
                key = (domain, deal["asin"])
                self.conn.execute("DELETE FROM candidates WHERE domain = ? AND asin = ?", key)
                self.conn.execute("DELETE FROM rejections WHERE domain = ? AND asin = ?", key)
            self._add_counter("deals_committed", len(deals), now)
        return len(deals)

    def _upsert_deal(self, domain: int, deal: Mapping[str, Any], now: float) -> None:
        values = [deal.get(f) for f in DEAL_FIELDS]
        history = deal.get("history")
        cols = ", ".join(DEAL_FIELDS)
        updates = ", ".join(f"{f} = excluded.{f}" for f in DEAL_FIELDS)
        self.conn.execute(
            f"INSERT INTO deals (domain, asin, {cols}, history, first_seen, updated_at) "
            f"VALUES (?, ?, {_marks(DEAL_FIELDS)}, ?, ?, ?) "
            f"ON CONFLICT (domain, asin) DO UPDATE SET {updates}, "
            "history = coalesce(excluded.history, deals.history), "
            "updated_at = excluded.updated_at, claim_owner = NULL, claim_expires = NULL",
            (domain, deal["asin"], *values, history, now, now),
        )

    def claim_stale_deals(
        self, domain: int, owner: str, limit: int, *, now: float, due_before: float, ttl_s: float
    ) -> list[str]:
        """Claim up to ``limit`` deals last updated at or before ``due_before``, stalest
        first, for ``ttl_s`` seconds."""
        if limit <= 0:
            return []
        with self._write():
            rows = self.conn.execute(
                "UPDATE deals SET claim_owner = ?, claim_expires = ? WHERE rowid IN "
                "(SELECT rowid FROM deals WHERE domain = ? AND updated_at <= ? AND "
                "(claim_owner IS NULL OR claim_expires <= ?) ORDER BY updated_at, asin LIMIT ?) "
                "RETURNING asin, updated_at",
                (owner, now + ttl_s, domain, due_before, now, limit),
            ).fetchall()
        rows.sort(key=lambda r: (r[1], r[0]))
        return [r[0] for r in rows]

    def refresh_deals(self, domain: int, deals: Sequence[Mapping[str, Any]], now: float) -> int:
        """Rewrite refreshed deals that still qualify (keeping ``first_seen`` and the price
        history) and release their claims."""
        if not deals:
            return 0
        updates = ", ".join(f"{f} = ?" for f in DEAL_FIELDS)
        n = 0
        with self._write():
            for deal in sorted(deals, key=lambda d: str(d["asin"])):  # one lock order
                # UPDATE, not upsert: a deal dropped meanwhile (an expired claim taken over by
                # another worker) stays dropped.
                cur = self.conn.execute(
                    f"UPDATE deals SET {updates}, updated_at = ?, refreshes = refreshes + 1, "
                    "claim_owner = NULL, claim_expires = NULL WHERE domain = ? AND asin = ?",
                    (*(deal.get(f) for f in DEAL_FIELDS), now, domain, deal["asin"]),
                )
                n += cur.rowcount
            self._add_counter("deals_refreshed", n, now)
        return n

    def drop_deals(self, domain: int, rejections: Sequence[Rejection], now: float) -> int:
        """Delete deals that stopped qualifying and record why, in one transaction."""
        if not rejections:
            return 0
        with self._write():
            self._reject(domain, rejections, now)
            self._add_counter("deals_dropped", len(rejections), now)
        return len(rejections)

    def release_deals(self, domain: int, owner: str, asins: Sequence[str] | None = None) -> int:
        """Give back refresh claims (all of ``owner``'s when ``asins`` is None)."""
        with self._write():
            if asins is None:
                cur = self.conn.execute(
                    "UPDATE deals SET claim_owner = NULL, claim_expires = NULL "
                    "WHERE domain = ? AND claim_owner = ?",
                    (domain, owner),
                )
            elif not asins:
                return 0
            else:
                cur = self.conn.execute(
                    "UPDATE deals SET claim_owner = NULL, claim_expires = NULL "
                    f"WHERE domain = ? AND claim_owner = ? AND asin IN ({_marks(asins)})",
                    (domain, owner, *asins),
                )
            return cur.rowcount

    def get_deal(self, domain: int, asin: str) -> dict[str, Any] | None:
        with self._lock:
            cur = self.conn.execute(
                "SELECT * FROM deals WHERE domain = ? AND asin = ?", (domain, asin.upper())
            )
            row = cur.fetchone()
            names = [d[0] for d in cur.description]
        return dict(zip(names, row, strict=True)) if row else None

    # --- queries for urgency and status --------------------------------------------------

    def claimable_candidates(self, domain: int, now: float) -> int:
        rows = self._read(
            "SELECT count(*) FROM candidates WHERE domain = ? AND "
            "(claim_owner IS NULL OR claim_expires <= ?)",
            (domain, now),
        )
        return int(rows[0][0])

    def stalest_claimable_deal(self, domain: int, now: float) -> float | None:
        """``updated_at`` of the stalest deal not claimed by anyone, or None."""
        rows = self._read(
            "SELECT min(updated_at) FROM deals WHERE domain = ? AND "
            "(claim_owner IS NULL OR claim_expires <= ?)",
            (domain, now),
        )
        return None if rows[0][0] is None else float(rows[0][0])

    def totals(self, now: float | None = None) -> dict[str, Any]:
        """Pipeline figures for ``keepa-fleet status`` (all domains)."""
        now = time.time() if now is None else now

        def one(sql: str, params: Sequence[Any] = ()) -> Any:
            return self._read(sql, params)[0][0]

        with self._lock:
            claimed = one(
                "SELECT count(*) FROM candidates WHERE claim_owner IS NOT NULL "
                "AND claim_expires > ?",
                (now,),
            )
            queued = one("SELECT count(*) FROM candidates")
            oldest_candidate = one("SELECT min(added_at) FROM candidates")
            stalest_deal = one("SELECT min(updated_at) FROM deals")
            reasons = dict(
                self._read("SELECT reason, count(*) FROM rejections GROUP BY reason ORDER BY 1")
            )
            return {
                "candidates_waiting": int(queued) - int(claimed),
                "candidates_claimed": int(claimed),
                "deals_live": int(one("SELECT count(*) FROM deals")),
                "deals_claimed": int(
                    one(
                        "SELECT count(*) FROM deals WHERE claim_owner IS NOT NULL "
                        "AND claim_expires > ?",
                        (now,),
                    )
                ),
                "deals_committed": int(self.get_state("deals_committed", 0)),
                "deals_refreshed": int(self.get_state("deals_refreshed", 0)),
                "deals_dropped": int(self.get_state("deals_dropped", 0)),
                "rejections": int(sum(reasons.values())),
                "rejections_by_reason": {str(k): int(v) for k, v in reasons.items()},
                "asins_seen": int(one("SELECT count(*) FROM seen")),
                "oldest_candidate_age_s": _age(now, oldest_candidate),
                "stalest_deal_age_s": _age(now, stalest_deal),
            }

    # --- deal queries (issue 19): which query found what -----------------------------------

    def queries_of(self, table: str, domain: int, asins: Sequence[str]) -> dict[str, str]:
        """The ``query`` of each ASIN in ``candidates`` or ``deals`` ('' when none)."""
        if table not in ("candidates", "deals"):
            raise ValueError(f"no query column in table {table!r}")
        if not asins:
            return {}
        rows = self._read(
            f"SELECT asin, query FROM {table} WHERE domain = ? AND asin IN ({_marks(asins)})",
            (domain, *asins),
        )
        return {str(a): str(q or "") for a, q in rows}

    def pipeline_domains(self, now: float) -> list[int]:
        """Domains with claimable candidates or deals, most waiting candidates first."""
        rows = self._read(
            "SELECT domain, sum(n) FROM (SELECT domain, count(*) AS n FROM candidates WHERE "
            "claim_owner IS NULL OR claim_expires <= ? GROUP BY domain UNION ALL "
            "SELECT domain, 0 FROM deals GROUP BY domain) GROUP BY domain ORDER BY 2 DESC, 1",
            (now,),
        )
        return [int(r[0]) for r in rows]

    def query_totals(self) -> dict[str, dict[str, int]]:
        """Per query: ``deals_live`` and ``candidates_queued`` (waiting or claimed)."""
        out: dict[str, dict[str, int]] = {}
        for table, key in (("deals", "deals_live"), ("candidates", "candidates_queued")):
            for name, n in self._read(f"SELECT query, count(*) FROM {table} GROUP BY query"):
                out.setdefault(str(name or ""), {})[key] = int(n)
        return out

    def add_query_counter(self, query: str, name: str, n: int, now: float) -> None:
        """Add ``n`` to the counter ``query:<query>:<name>`` (tokens, deals found, ...)."""
        if n:
            with self.transaction():
                self._add_counter(f"query:{query}:{name}", n, now)

    def integrity_check(self) -> str:
        """``ok``, or what is wrong: SQLite's own check of the file, then the pipeline's rule
        that an ASIN is in at most one of candidates/deals/rejections."""
        rows = self._read("PRAGMA integrity_check")
        found = "; ".join(str(r[0]) for r in rows)
        return found if found != "ok" else self._one_table_check()

    def _one_table_check(self) -> str:
        problems = []
        for a, b in (
            ("candidates", "deals"),
            ("candidates", "rejections"),
            ("deals", "rejections"),
        ):
            n = self._read(
                f"SELECT count(*) FROM {a} x JOIN {b} y ON x.domain = y.domain AND x.asin = y.asin"
            )[0][0]
            if n:
                problems.append(f"{n} ASINs both in {a} and {b}")
        return "; ".join(problems) or "ok"

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


def _marks(items: Sequence[Any]) -> str:
    return ", ".join("?" * len(items))


def _age(now: float, then: Any) -> float | None:
    return None if then is None else round(max(0.0, now - float(then)), 3)
