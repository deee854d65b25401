"""The dashboard's reads of the deals database: a read-only connection, parameterised SQL
only, server-side paging with a stable sort key (the sort column, then domain and asin).

Kept to plain SQL against the tables ``common.storage`` creates, so a second backend needs
only another connection. Bad parameters raise ``BadQuery`` with a message for a 400.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PAGE_SIZE_MAX = 200
PAGE_SIZE_DEFAULT = 50
SEARCH_MAX_CHARS = 100

# Sort name -> column; the only column names that ever reach the SQL text.
SORTS = {
    "profit": "profit",
    "drop": "drop_percent",
    "rank": "sales_rank",
    "offers": "offers",
    "price": "current",
    "first_seen": "first_seen",
    "updated": "updated_at",
}
# Filter parameter -> (column, operator); values always bound as parameters.
NUMERIC_FILTERS = {
    "min_drop": ("drop_percent", ">="),
    "min_profit": ("profit", ">="),
    "max_rank": ("sales_rank", "<="),
    "max_offers": ("offers", "<="),
}
DEAL_COLUMNS = (
    "domain, asin, title, current, avg90, drop_percent, sales_rank, offers, profit, "
    "first_seen, updated_at"
)


class BadQuery(ValueError):
    """A query parameter the dashboard refuses; its message says which and why."""


@dataclass(frozen=True)
class DealQuery:
    sort: str = "profit"
    descending: bool = True
    page: int = 1
    size: int = PAGE_SIZE_DEFAULT
    search: str = ""
    category: int | None = None
    domain: int | None = None
    filters: tuple[tuple[str, float], ...] = ()

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> DealQuery:
        known = {"sort", "order", "page", "size", "q", "category", "domain", *NUMERIC_FILTERS}
        unknown = sorted(set(params) - known)
        if unknown:
            raise BadQuery(f"unknown parameter {unknown[0]!r}; known: {', '.join(sorted(known))}")
        sort = params.get("sort") or "profit"
        if sort not in SORTS:
            raise BadQuery(f"sort must be one of {', '.join(SORTS)}, not {sort!r}")
        order = params.get("order") or "desc"
        if order not in ("asc", "desc"):
            raise BadQuery(f"order must be asc or desc, not {order!r}")
        search = (params.get("q") or "").strip()
        if len(search) > SEARCH_MAX_CHARS:
            raise BadQuery(f"q is longer than {SEARCH_MAX_CHARS} characters")
        filters = tuple(
            (name, _number(name, params[name])) for name in NUMERIC_FILTERS if params.get(name)
        )
        return cls(
            sort=sort,
            descending=order == "desc",
            page=_int("page", params.get("page"), 1, 1, 1_000_000),
            size=_int("size", params.get("size"), PAGE_SIZE_DEFAULT, 1, PAGE_SIZE_MAX),
            search=search,
            category=_opt_int("category", params.get("category")),
            domain=_opt_int("domain", params.get("domain")),
            filters=filters,
        )

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        for name, value in self.filters:
            column, op = NUMERIC_FILTERS[name]
            clauses.append(f"{column} {op} ?")
            args.append(value)
        if self.domain is not None:
            clauses.append("domain = ?")
            args.append(self.domain)
        if self.category is not None:
            clauses.append("json_extract(raw, '$.rootCategory') = ?")
            args.append(self.category)
        if self.search:
            escaped = self.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append("(title LIKE ? ESCAPE '\\' OR asin = ?)")
            args += [f"%{escaped}%", self.search.upper()]
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def connect(path: str | Path, *, any_thread: bool = False) -> sqlite3.Connection:
    """A read-only connection (``mode=ro``): the dashboard can never write the database.
    ``any_thread``: the connection is used by one thread at a time, not always the same one
    (a streamed export)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no database at {path} (has a worker run yet?)")
    conn = sqlite3.connect(
        f"file:{Path(path).resolve()}?mode=ro",
        uri=True,
        timeout=5,
        check_same_thread=not any_thread,
    )
    conn.row_factory = sqlite3.Row
    return conn


def deals_page(conn: sqlite3.Connection, q: DealQuery) -> tuple[list[dict[str, Any]], int]:
    """One page of deals in a stable order, and the number of deals matching the filters."""
    where, args = q.where()
    direction = "DESC" if q.descending else "ASC"
    column = SORTS[q.sort]
    sql = (
        f"SELECT {DEAL_COLUMNS} FROM deals{where} "
        f"ORDER BY {column} IS NULL, {column} {direction}, domain, asin LIMIT ? OFFSET ?"
    )
    rows = conn.execute(sql, [*args, q.size, (q.page - 1) * q.size]).fetchall()
    total = conn.execute(f"SELECT count(*) FROM deals{where}", args).fetchone()[0]
    return [dict(r) for r in rows], int(total)


def deals_export(
    conn: sqlite3.Connection, q: DealQuery, limit: int, batch: int = 500
) -> Iterator[dict[str, Any]]:
    """Every deal matching the filters, in the view's order (paging ignored), at most
    ``limit``; read ``batch`` rows at a time, never the whole result at once."""
    where, args = q.where()
    direction = "DESC" if q.descending else "ASC"
    column = SORTS[q.sort]
    cur = conn.execute(
        f"SELECT {DEAL_COLUMNS} FROM deals{where} "
        f"ORDER BY {column} IS NULL, {column} {direction}, domain, asin LIMIT ?",
        [*args, limit],
    )
    while rows := cur.fetchmany(batch):
        for r in rows:
            yield dict(r)


def deal(conn: sqlite3.Connection, domain: int, asin: str) -> dict[str, Any] | None:
    row = conn.execute(
        f"SELECT {DEAL_COLUMNS}, history FROM deals WHERE domain = ? AND asin = ?",
        (domain, asin.upper()),
    ).fetchone()
    return dict(row) if row else None


def new_since(conn: sqlite3.Connection, since: float) -> int:
    return int(
        conn.execute("SELECT count(*) FROM deals WHERE first_seen > ?", (since,)).fetchone()[0]
    )


def rejection_breakdown(conn: sqlite3.Connection, bucket_s: int = 3600) -> list[dict[str, Any]]:
    """Rejections per reason per time bucket (``bucket`` = epoch seconds of its start)."""
    rows = conn.execute(
        "SELECT reason, CAST(at / ? AS INTEGER) * ? AS bucket, count(*) AS n FROM rejections "
        "GROUP BY reason, bucket ORDER BY bucket, reason",
        (bucket_s, bucket_s),
    ).fetchall()
    return [dict(r) for r in rows]


BUCKETS_S = {"minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class RejectionQuery:
    """The why-not page's parameters: one reason or all, a page, the chart's bucket."""

    reason: str = ""
    page: int = 1
    size: int = PAGE_SIZE_DEFAULT
    bucket: str = "hour"

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> RejectionQuery:
        known = {"reason", "page", "size", "bucket"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise BadQuery(f"unknown parameter {unknown[0]!r}; known: {', '.join(sorted(known))}")
        reason = (params.get("reason") or "").strip()
        if len(reason) > SEARCH_MAX_CHARS:
            raise BadQuery(f"reason is longer than {SEARCH_MAX_CHARS} characters")
        bucket = params.get("bucket") or "hour"
        if bucket not in BUCKETS_S:
            raise BadQuery(f"bucket must be one of {', '.join(BUCKETS_S)}, not {bucket!r}")
        return cls(
            reason=reason,
            page=_int("page", params.get("page"), 1, 1, 1_000_000),
            size=_int("size", params.get("size"), PAGE_SIZE_DEFAULT, 1, PAGE_SIZE_MAX),
            bucket=bucket,
        )


def rejections_page(
    conn: sqlite3.Connection, reason: str | None, page: int, size: int
) -> tuple[list[dict[str, Any]], int]:
    """One page of rejected candidates (newest first) with their reason, and how many match."""
    where, args = (" WHERE reason = ?", [reason]) if reason else ("", [])
    rows = conn.execute(
        "SELECT domain, asin, reason, filter, detail, at, times FROM rejections"
        f"{where} ORDER BY at DESC, domain, asin LIMIT ? OFFSET ?",
        [*args, size, (page - 1) * size],
    ).fetchall()
    total = conn.execute(f"SELECT count(*) FROM rejections{where}", args).fetchone()[0]
    return [dict(r) for r in rows], int(total)


KEEPA_EPOCH_MINUTE = 21564000


def keepa_minutes_to_ms(minute: int) -> int:
    """Keepa time (minutes since 2011-01-01) to unix milliseconds."""
    return (minute + KEEPA_EPOCH_MINUTE) * 60000


def price_series(csv_json: list[Any] | None, price_type: int = 1) -> list[tuple[int, int | None]]:
    """(unix_ms, price or None for no offer) from a product's ``csv`` history."""
    if not csv_json or len(csv_json) <= price_type or not csv_json[price_type]:
        return []
    flat = csv_json[price_type]
    return [
        (keepa_minutes_to_ms(int(flat[i])), None if flat[i + 1] < 0 else int(flat[i + 1]))
        for i in range(0, len(flat) - 1, 2)
    ]


def _int(name: str, raw: str | None, default: int, lo: int, hi: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadQuery(f"{name} must be a whole number, not {raw!r}") from None
    if not lo <= value <= hi:
        raise BadQuery(f"{name} must be between {lo} and {hi}, not {value}")
    return value


def _opt_int(name: str, raw: str | None) -> int | None:
    return None if not raw else _int(name, raw, 0, 0, 2**31)


def _number(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise BadQuery(f"{name} must be a number, not {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise BadQuery(f"{name} must be a finite number, not {raw!r}")
    return value
