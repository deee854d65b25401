"""The dashboard's deals query with 100,000 deals: one page (sorted, filtered) must answer
in <= 300 ms. Measures ``web.queries.deals_page`` (the page's whole database work); the
HTTP layer is not built yet."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from common.storage import Storage
from web import queries
from web.queries import DealQuery

NAME = "web_deals"
TITLE = "Dashboard: one deals page with 100,000 deals"
DEALS = 100_000
GOAL_MS = 300.0
REPEATS = 15


def _fill(path: Path) -> None:
    with Storage.open(path) as s:
        rows = [
            (
                1,
                f"B{i:09d}",
                f"product {i}",
                1,
                1000 + i % 5000,
                2000,
                float(i % 90),
                i * 7 % 500_000,
                i % 40,
                (i * 37) % 10_000,
                1000.0 + i,
                1000.0 + i,
                f'{{"rootCategory": {i % 20}}}',
            )
            for i in range(DEALS)
        ]
        s.conn.execute("BEGIN")
        s.conn.executemany(
            "INSERT INTO deals (domain, asin, title, price_type, current, avg90, drop_percent,"
            " sales_rank, offers, profit, first_seen, updated_at, raw) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        s.conn.execute("COMMIT")


def run(profile: str, log_dir: Path) -> str:
    cases = {
        "sort by profit, page 1": {"sort": "profit"},
        "sort by drop, page 100": {"sort": "drop", "page": "100"},
        "filters + search": {"min_drop": "30", "max_offers": "10", "q": "product 9"},
        "category filter": {"category": "3", "sort": "rank", "order": "asc"},
    }
    lines = [f"| case | median ms | max ms | goal ≤ {GOAL_MS:g} ms |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fleet.db"
        _fill(path)
        conn = queries.connect(path)
        for label, params in cases.items():
            q = DealQuery.parse(params)
            times = []
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                queries.deals_page(conn, q)
                times.append((time.perf_counter() - t0) * 1000)
            med = statistics.median(times)
            ok = "met" if max(times) <= GOAL_MS else "**missed**"
            lines.append(f"| {label} | {med:.1f} | {max(times):.1f} | {ok} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(run("quick", Path(".")))
