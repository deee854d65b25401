"""Which write failures mean "storage is unhealthy", and what to call each.

A write that fails because of the storage itself (not because of the data or a bug) is
*transient* from the worker's point of view: the same write will succeed once an operator
frees space, makes the file writable again or the other writer lets go. The worker keeps
what it paid for and retries (``workers.storage_gate``); anything else is a bug and goes
through the work loop's usual error path.

===================  =========================================================================
problem              raised as
===================  =========================================================================
``disk_full``        SQLite ``SQLITE_FULL`` ("database or disk is full"), ``ENOSPC``, EDQUOT;
                     PostgreSQL SQLSTATE 53100 (disk full) / 53xxx (insufficient resources)
``read_only``        SQLite ``SQLITE_READONLY`` ("attempt to write a readonly database"),
                     "unable to open database file" on a write, ``EROFS``, ``EACCES``;
                     PostgreSQL 25006 (read-only transaction)
``io_error``         SQLite ``SQLITE_IOERR`` ("disk I/O error"), ``EIO``
``locked``           SQLite "database is locked" / "database table is locked" (past the busy
                     timeout)
``unavailable``      ``common.errors.StorageUnavailable`` (PostgreSQL unreachable through its
                     retries)
===================  =========================================================================

``classify(exc)`` returns one of these names, or None for an error that is not the storage's.
Pure: no I/O, no imports of a driver.
"""

from __future__ import annotations

import errno
import sqlite3

from common.errors import StorageUnavailable

DISK_FULL = "disk_full"
READ_ONLY = "read_only"
IO_ERROR = "io_error"
LOCKED = "locked"
UNAVAILABLE = "unavailable"
PROBLEMS = (DISK_FULL, READ_ONLY, IO_ERROR, LOCKED, UNAVAILABLE)

# What a person reads (status, logs).
DESCRIPTIONS = {
    DISK_FULL: "database disk full",
    READ_ONLY: "database read-only",
    IO_ERROR: "database I/O error",
    LOCKED: "database locked past the busy timeout",
    UNAVAILABLE: "database unreachable",
}

_ERRNOS = {
    errno.ENOSPC: DISK_FULL,
    errno.EDQUOT: DISK_FULL,
    errno.EFBIG: DISK_FULL,
    errno.EROFS: READ_ONLY,
    errno.EACCES: READ_ONLY,
    errno.EPERM: READ_ONLY,
    errno.EIO: IO_ERROR,
}
# SQLite's messages (sqlite3_errstr), lower case; the first that appears in the text wins.
_SQLITE_TEXT = (
    ("database or disk is full", DISK_FULL),
    ("disk is full", DISK_FULL),
    ("readonly database", READ_ONLY),
    ("read-only", READ_ONLY),
    ("unable to open database file", READ_ONLY),
    ("disk i/o error", IO_ERROR),
    ("database is locked", LOCKED),
    ("database table is locked", LOCKED),
)
# sqlite3.Error.sqlite_errorcode & 0xFF (the primary result code).
_SQLITE_CODES = {13: DISK_FULL, 8: READ_ONLY, 10: IO_ERROR, 5: LOCKED, 6: LOCKED, 14: READ_ONLY}


def classify(exc: BaseException) -> str | None:
    """The storage problem ``exc`` is, or None when it is not one."""
    if isinstance(exc, StorageUnavailable):
        return UNAVAILABLE
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int) and (code & 0xFF) in _SQLITE_CODES:
            return _SQLITE_CODES[code & 0xFF]
        text = str(exc).lower()
        for needle, problem in _SQLITE_TEXT:
            if needle in text:
                return problem
        return None
    sqlstate = getattr(exc, "sqlstate", None)  # psycopg errors carry it
    if isinstance(sqlstate, str):
        if sqlstate == "25006":
            return READ_ONLY
        if sqlstate.startswith("53"):
            return DISK_FULL
        if sqlstate.startswith("58"):
            return IO_ERROR
        return None
    if isinstance(exc, OSError) and exc.errno in _ERRNOS:
        return _ERRNOS[exc.errno]
    return None


def describe(problem: str) -> str:
    return DESCRIPTIONS.get(problem, problem)
