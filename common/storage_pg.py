"""The PostgreSQL backend of ``common.storage``: one database for workers on several hosts.

``FLEET_DB=postgresql://user:password@host:5432/fleet`` selects it. The tables, columns and
meanings are those of the SQLite backend (the same migration list, its types mapped by
``pg_ddl``: INTEGER is BIGINT, REAL is DOUBLE PRECISION, so epoch seconds keep their
precision). What differs, and why:

==========================  =================================================================
SQLite                      PostgreSQL
==========================  =================================================================
one writer at a time        many writers; a claim is ``UPDATE ... WHERE (domain, asin) IN
(``BEGIN IMMEDIATE``)       (SELECT ... FOR UPDATE SKIP LOCKED)``: two claimers never wait
                            for each other and never get the same row
the write lock serializes   writes of the same ASINs take a transaction advisory lock per
add/commit/reject           ``(domain, asin)`` (in ASIN order), so "an ASIN is in one table"
                            holds as on SQLite; ``transaction()`` (read-then-write callers,
                            the deal-feed watermark) takes one fleet-wide advisory lock
busy timeout (30 s)         a lost connection, a deadlock or a serialization failure is
                            retried with capped backoff for ``RETRY_LIMIT_S``, reconnecting
                            as needed; then ``StorageUnavailable`` (a ``StorageError``), which
                            the worker loop treats like any failed batch: claims given back,
                            backoff, next turn. One log line when an outage begins, one when
                            it ends, none per retry.
==========================  =================================================================

A write retried after the connection dropped during its COMMIT may run twice: every write is
an idempotent upsert, so only the ``state`` counters can count it twice. A claim retried that
way leaves the first claim in place until it expires (the candidates come back then); nothing
is lost and nothing is claimed by two owners.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import conninfo

from common.errors import StorageError, StorageUnavailable
from common.storage import MAX_CLAIM_ATTEMPTS, Rejection, Storage

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5  # libpq's connect_timeout: one connection attempt at most
# A query on a connection whose peer vanished (cable, namespace, host down) fails after this
# instead of waiting for TCP's retransmissions (minutes).
TCP_USER_TIMEOUT_MS = 10_000
KEEPALIVE_IDLE_S = 5
RETRY_LIMIT_S = 20.0  # one call retries this long, then StorageUnavailable (below the
# worker's 25 s drain limit, so a SIGTERM during an outage still drains in time)
OPEN_RETRY_S = 10.0  # opening retries a refused connection this long (a server starting)
RETRY_MIN_S = 0.1
RETRY_MAX_S = 2.0
# Advisory lock keys (the one-bigint form; per-ASIN locks use the two-int4 form, a separate
# key space). Arbitrary constants, spelled "kfleet" + a digit.
WRITE_LOCK_KEY = 0x6B666C656574_01
MIGRATE_LOCK_KEY = 0x6B666C656574_02

# A refused connection says the server is not there (yet); one it answered with FATAL is
# final, unless it says it is starting, stopping or full (libpq gives no SQLSTATE here).
PASSING_FATALS = ("starting up", "shutting down", "in recovery", "too many clients")
RETRYABLE = (psycopg.OperationalError, psycopg.InterfaceError)

_T = TypeVar("_T")


def pg_ddl(sql: str) -> str:
    """A migration statement written for SQLite, in PostgreSQL's types."""
    sql = re.sub(r"\bREAL\b", "DOUBLE PRECISION", sql)
    return re.sub(r"\bINTEGER\b", "BIGINT", sql)


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def connection_params(url: str) -> dict[str, Any]:
    """libpq parameters of ``url``; ours fill in only what the URL does not set."""
    try:
        params: dict[str, Any] = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise StorageError(f"{redact(url)} is not a valid PostgreSQL URL: {exc}") from None
    defaults = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "keepalives": 1,
        "keepalives_idle": KEEPALIVE_IDLE_S,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
        "application_name": "keepa-fleet",
    }
    for key, value in defaults.items():
        params.setdefault(key, value)
    return params


class PgConnection:
    """A psycopg connection with sqlite3's face: ``execute(sql, params)`` with ``?`` marks
    (the shared SQL of ``common.storage`` is written that way; none of it has a literal ``?``
    or ``%``), ``in_transaction``, ``close()``."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        if params:
            return self.raw.execute(sql.replace("?", "%s"), tuple(params))
        return self.raw.execute(sql)

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    @property
    def usable(self) -> bool:
        return not self.raw.closed and not self.raw.broken

    def close(self) -> None:
        self.raw.close()


def _retrying(method: Callable[..., _T]) -> Callable[..., _T]:
    """Run a public storage method with the retries of ``PostgresStorage._with_retries``;
    a call made inside another (or inside ``transaction()``) is retried by the outer one."""

    @functools.wraps(method)
    def call(self: PostgresStorage, *args: Any, **kwargs: Any) -> _T:
        with self._lock:
            if self._calls or self._depth:
                return method(self, *args, **kwargs)
            self._calls += 1
            try:
                return self._with_retries(lambda: method(self, *args, **kwargs))
            finally:
                self._calls -= 1

    return call


class PostgresStorage(Storage):
    """``Storage`` on a PostgreSQL server. One connection per process (autocommit; every
    write an explicit transaction), shared by its threads under a lock, as on SQLite."""

    retry_limit_s = RETRY_LIMIT_S
    open_retry_s = OPEN_RETRY_S

    def __init__(self, url: str) -> None:  # not Storage's: no sqlite connection here
        self.url = url
        self.path = redact(url)
        self._lock = threading.RLock()
        self._conn: PgConnection | None = None
        self._depth = 0  # open _write() blocks
        self._calls = 0  # public calls in progress (the outermost one retries)
        self._outage_since: float | None = None
        self._outage_reason = ""

    # --- opening ------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Any) -> Storage:
        return cls.open_url(str(path))

    @classmethod
    def open_url(cls, url: str) -> PostgresStorage:
        """Connect (retrying a refused connection up to ``open_retry_s``) and migrate.
        StorageError names the server (never the password) and the reason."""
        storage = cls(url)
        params = connection_params(url)
        deadline = time.monotonic() + cls.open_retry_s
        delay = RETRY_MIN_S
        while True:
            try:
                storage._conn = PgConnection(psycopg.connect(autocommit=True, **params))
                break
            except psycopg.OperationalError as exc:
                # A refused or timed-out connection (no SQLSTATE) or a server starting up is
                # worth waiting for; what the server refused (no such database, bad password)
                # is not.
                if not _worth_waiting(exc) or time.monotonic() + delay > deadline:
                    raise StorageError(
                        f"cannot connect to the database {storage.path}: {_reason(exc)}"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        try:
            storage._migrate(time.time())
        except psycopg.Error as exc:
            storage.close()
            raise StorageError(f"cannot use the database {storage.path}: {_reason(exc)}") from None
        except BaseException:
            storage.close()
            raise
        return storage

    @property
    def conn(self) -> PgConnection:
        if self._conn is None or not self._conn.usable:
            self._reconnect()
        assert self._conn is not None
        return self._conn

    @conn.setter
    def conn(self, value: PgConnection) -> None:
        self._conn = value

    def _reconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        self._conn = PgConnection(psycopg.connect(autocommit=True, **connection_params(self.url)))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"PostgresStorage({self.path!r})"

    # --- retries ------------------------------------------------------------------------

    def _with_retries(self, fn: Callable[[], _T]) -> _T:
        deadline = time.monotonic() + self.retry_limit_s
        delay = RETRY_MIN_S
        while True:
            try:
                result = fn()
            except RETRYABLE as exc:
                self._note_failure(exc)
                if time.monotonic() + delay > deadline:
                    raise StorageUnavailable(
                        f"database {self.path}: {_reason(exc)} (retried for "
                        f"{self.retry_limit_s:g} s)"
                    ) from exc
                time.sleep(delay * random.uniform(0.75, 1.25))
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            self._note_success()
            return result

    def _note_failure(self, exc: BaseException) -> None:
        if self._conn is not None and not self._conn.usable:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        if self._outage_since is None:  # ok -> failing: one line
            self._outage_since = time.monotonic()
            self._outage_reason = _reason(exc)
            log.warning(
                "database %s: %s: retrying (up to %g s per call)",
                self.path,
                self._outage_reason,
                self.retry_limit_s,
            )

    def _note_success(self) -> None:
        if self._outage_since is not None:  # failing -> ok: one line
            log.info(
                "database %s: working again after %.1f s",
                self.path,
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None
            self._outage_reason = ""

    def problem(self) -> str | None:
        """What is wrong with the database right now (for status), or None."""
        if self._outage_since is None:
            return None
        return f"database unreachable for {time.monotonic() - self._outage_since:.0f} s: " + (
            self._outage_reason
        )

    # --- transactions -------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[Any]:
        with self._lock:
            conn = self.conn
            self._depth += 1
            try:
                with conn.raw.transaction():  # nested: a savepoint
                    yield self
            finally:
                self._depth -= 1

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """A write transaction holding the fleet-wide write lock (an advisory lock), so a
        read-then-write block is not interleaved with another one, as on SQLite. A lost
        connection inside it raises StorageUnavailable (the block cannot be re-run here)."""
        with self._lock:
            outermost = self._depth == 0 and self._calls == 0
            try:
                with self._write():
                    if outermost:
                        self.conn.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK_KEY,))
                    yield self
            except RETRYABLE as exc:
                if not outermost:
                    raise
                self._note_failure(exc)
                raise StorageUnavailable(f"database {self.path}: {_reason(exc)}") from exc
            if outermost:
                self._note_success()

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

    # --- backend hooks ------------------------------------------------------------------

    _GREATEST = "greatest"
    _COUNTER_SQL = (
        "INSERT INTO state (key, value, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET "
        "value = (CAST(state.value AS BIGINT) + CAST(excluded.value AS BIGINT))::text, "
        "updated_at = excluded.updated_at"
    )

    def _ddl(self, sql: str) -> str:
        return pg_ddl(sql)

    def _lock_for_migration(self) -> None:
        self.conn.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATE_LOCK_KEY,))

    def _lock_asins(self, domain: int, asins: Sequence[str]) -> None:
        keys = sorted(set(asins))
        if keys:
            self.conn.execute(
                "SELECT count(pg_advisory_xact_lock(?, hashtext(a))) FROM "
                "(SELECT a FROM unnest(CAST(? AS text[])) AS a ORDER BY a) AS ordered",
                (domain, keys),
            )

    # --- claims -------------------------------------------------------------------------

    def claim_candidates(
        self, domain: int, owner: str, limit: int, *, now: float, ttl_s: float
    ) -> list[str]:
        """As on SQLite; the rows come from ``FOR UPDATE SKIP LOCKED``, so claimers on any
        host never wait for each other and never share a candidate."""
        if limit <= 0:
            return []
        with self._write():
            poisoned = [
                r[0]
                for r in self.conn.execute(
                    "SELECT asin FROM candidates WHERE domain = ? AND attempts >= ? "
                    "AND (claim_owner IS NULL OR claim_expires <= ?)",
                    (domain, MAX_CLAIM_ATTEMPTS, now),
                ).fetchall()
            ]
            if poisoned:
                self._lock_asins(domain, poisoned)  # then look again, under the locks
                gone = self.conn.execute(
                    "DELETE FROM candidates WHERE domain = ? AND asin = ANY(?) "
                    "AND attempts >= ? AND (claim_owner IS NULL OR claim_expires <= ?) "
                    "RETURNING asin, attempts",
                    (domain, poisoned, MAX_CLAIM_ATTEMPTS, now),
                ).fetchall()
                if gone:
                    log.warning("rejecting %d candidates claimed too often", len(gone))
                    self._reject(
                        domain,
                        [Rejection(a, "attempts", "attempts", {"attempts": n}) for a, n in gone],
                        now,
                    )
            rows = self.conn.execute(
                "UPDATE candidates SET claim_owner = ?, claim_expires = ?, "
                "attempts = attempts + 1 WHERE (domain, asin) IN (SELECT domain, asin "
                "FROM candidates WHERE domain = ? AND attempts < ? AND "
                "(claim_owner IS NULL OR claim_expires <= ?) ORDER BY added_at, asin LIMIT ? "
                "FOR UPDATE SKIP LOCKED) RETURNING asin, added_at",
                (owner, now + ttl_s, domain, MAX_CLAIM_ATTEMPTS, now, limit),
            ).fetchall()
        rows.sort(key=lambda r: (r[1], r[0]))
        return [r[0] for r in rows]

    def claim_stale_deals(
        self, domain: int, owner: str, limit: int, *, now: float, due_before: float, ttl_s: float
    ) -> list[str]:
        if limit <= 0:
            return []
        with self._write():
            rows = self.conn.execute(
                "UPDATE deals SET claim_owner = ?, claim_expires = ? WHERE (domain, asin) IN "
                "(SELECT domain, asin FROM deals WHERE domain = ? AND updated_at <= ? AND "
                "(claim_owner IS NULL OR claim_expires <= ?) ORDER BY updated_at, asin LIMIT ? "
                "FOR UPDATE SKIP LOCKED) RETURNING asin, updated_at",
                (owner, now + ttl_s, domain, due_before, now, limit),
            ).fetchall()
        rows.sort(key=lambda r: (r[1], r[0]))
        return [r[0] for r in rows]

    def integrity_check(self) -> str:
        """The pipeline's rule that an ASIN is in at most one of candidates/deals/rejections
        (the server looks after its own files)."""
        return self._one_table_check()


def _worth_waiting(exc: psycopg.OperationalError) -> bool:
    text = str(exc)
    return "FATAL:" not in text or any(p in text for p in PASSING_FATALS)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# Every public method of the interface retries as one unit (see _retrying).
for _name in (
    "schema_version",
    "get_state",
    "set_state",
    "add_candidates",
    "claim_candidates",
    "renew_claims",
    "release_candidates",
    "reject_candidates",
    "commit_deals",
    "claim_stale_deals",
    "refresh_deals",
    "drop_deals",
    "release_deals",
    "get_deal",
    "claimable_candidates",
    "stalest_claimable_deal",
    "totals",
    "integrity_check",
):
    setattr(PostgresStorage, _name, _retrying(getattr(PostgresStorage, _name)))
