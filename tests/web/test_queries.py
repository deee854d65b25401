"""web.queries against a real SQLite file written by common.storage."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from common.storage import Storage
from web import queries
from web.queries import BadQuery, DealQuery


def _db(tmp_path: Path, n: int = 30) -> Path:
    path = tmp_path / "fleet.db"
    with Storage.open(path) as s:
        deals = [
            {
                "asin": f"B{i:09d}",
                "title": f"thing {i} <b>&</b>" if i != 7 else "50% off_sale",
                "price_type": 1,
                "current": 1000 + i,
                "avg90": 2000,
                "drop_percent": float(i % 10),
                "sales_rank": 100 * i,
                "offers": i % 5,
                "profit": (i * 37) % 101,
                "raw": f'{{"rootCategory": {i % 3}}}',
            }
            for i in range(n)
        ]
        s.commit_deals(1, deals, now=1000.0)
    return path


def test_pages_are_sorted_stable_and_cover_every_row(tmp_path: Path) -> None:
    conn = queries.connect(_db(tmp_path))
    seen: list[str] = []
    for page in (1, 2, 3, 4):
        rows, total = queries.deals_page(conn, DealQuery(sort="profit", page=page, size=8))
        assert total == 30
        seen += [r["asin"] for r in rows]
    assert len(seen) == len(set(seen)) == 30
    rows, _ = queries.deals_page(conn, DealQuery(sort="profit", size=30))
    profits = [r["profit"] for r in rows]
    assert profits == sorted(profits, reverse=True)


def test_filters_and_search(tmp_path: Path) -> None:
    conn = queries.connect(_db(tmp_path))
    q = DealQuery.parse({"min_drop": "5", "max_offers": "2", "category": "1"})
    rows, total = queries.deals_page(conn, q)
    assert total == len(rows) > 0
    assert all(r["drop_percent"] >= 5 and r["offers"] <= 2 for r in rows)
    # LIKE wildcards in the search text are literal.
    rows, total = queries.deals_page(conn, DealQuery.parse({"q": "50% off_"}))
    assert [r["asin"] for r in rows] == ["B000000007"]
    rows, total = queries.deals_page(conn, DealQuery.parse({"q": "%"}))
    assert total == 1


def test_sql_ish_search_is_harmless(tmp_path: Path) -> None:
    path = _db(tmp_path)
    conn = queries.connect(path)
    _rows, total = queries.deals_page(conn, DealQuery.parse({"q": "'; DROP TABLE deals; --"}))
    assert total == 0
    assert sqlite3.connect(path).execute("select count(*) from deals").fetchone()[0] == 30


def test_connection_is_read_only(tmp_path: Path) -> None:
    conn = queries.connect(_db(tmp_path))
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("DELETE FROM deals")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sort": "title; drop"}, "sort must be one of"),
        ({"order": "sideways"}, "order must be asc or desc"),
        ({"page": "0"}, "page must be between"),
        ({"size": "abc"}, "size must be a whole number"),
        ({"min_profit": "nan"}, "finite"),
        ({"bogus": "1"}, "unknown parameter 'bogus'"),
    ],
)
def test_bad_parameters_are_refused(params: dict[str, str], message: str) -> None:
    with pytest.raises(BadQuery, match=message):
        DealQuery.parse(params)


def test_keepa_minutes_to_dates() -> None:
    # Keepa minute 0 is 2011-01-01 00:00 UTC.
    assert queries.keepa_minutes_to_ms(0) == 1293840000000
    series = queries.price_series([[], [0, 1999, 60, -1]])
    assert series == [(1293840000000, 1999), (1293843600000, None)]
