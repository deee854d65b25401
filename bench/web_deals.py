"""The dashboard with 100,000 deals: one deals page must answer in <= 300 ms over HTTP.

Two layers are timed on the same file: ``web.queries.deals_page`` (the page's whole database
work) and ``GET /deals`` from a real ``keepa-fleet web`` process (uvicorn, the template, the
read-only connection of each request). The page reads one page of rows (LIMIT/OFFSET) and a
count, never the whole table: the HTML is the same size with 1,000 deals as with 100,000
(the last table). The baseline beside the HTTP figure is the database work alone.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from common.storage import Storage
from web import queries
from web.queries import DealQuery

NAME = "web_deals"
TITLE = "Dashboard: one deals page with 100,000 deals"
DEALS = 100_000
SMALL = 1_000
GOAL_MS = 300.0
REPEATS = 15
START_TIMEOUT_S = 30.0
ROOT = Path(__file__).resolve().parent.parent

CASES = {
    "sort by profit, page 1": {"sort": "profit"},
    "sort by drop, page 100": {"sort": "drop", "page": "100"},
    "filters + search": {"min_drop": "30", "max_offers": "10", "q": "product 9"},
    "category filter": {"category": "3", "sort": "rank", "order": "asc"},
}


def _fill(path: Path, n: int = DEALS) -> None:
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
            for i in range(n)
        ]
        s.conn.execute("BEGIN")
        s.conn.executemany(
            "INSERT INTO deals (domain, asin, title, price_type, current, avg90, drop_percent,"
            " sales_rank, offers, profit, first_seen, updated_at, raw) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        s.conn.execute("COMMIT")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Web:
    """``keepa-fleet web`` on a database, as a subprocess (stopped on exit)."""

    def __init__(self, db: Path, log_dir: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "FLEET_BROKER": "tcp://127.0.0.1:1"}
        log = open(log_dir / "web_deals_web.log", "ab")  # noqa: SIM115 - closed below
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "common.cli",
                "web",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--db",
                str(db),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        log.close()

    def __enter__(self) -> _Web:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if requests.get(f"{self.url}/deals?size=1", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("keepa-fleet web did not start (see web_deals_web.log)")
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _time_ms(fn: object, repeats: int = REPEATS) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - t0) * 1000)
    return times


def run(profile: str, log_dir: Path) -> str:
    lines = [
        f"| case | database work, median ms (max) | HTTP page, median ms (max) | "
        f"goal ≤ {GOAL_MS:g} ms |",
        "|---|---|---|---|",
    ]
    sizes: dict[int, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fleet.db"
        _fill(path)
        conn = queries.connect(path)
        with _Web(path, log_dir) as web, requests.Session() as http:
            for label, params in CASES.items():
                q = DealQuery.parse(params)
                db_ms = _time_ms(lambda q=q: queries.deals_page(conn, q))

                def page(params: dict[str, str] = params) -> None:
                    r = http.get(f"{web.url}/deals", params=params, timeout=10)
                    r.raise_for_status()

                http_ms = _time_ms(page)
                ok = "met" if max(http_ms) <= GOAL_MS else "**missed**"
                lines.append(
                    f"| {label} | {statistics.median(db_ms):.1f} ({max(db_ms):.1f}) | "
                    f"{statistics.median(http_ms):.1f} ({max(http_ms):.1f}) | {ok} |"
                )
            sizes[DEALS] = len(http.get(f"{web.url}/deals", timeout=10).content)
        conn.close()
        small = Path(tmp) / "small.db"
        _fill(small, SMALL)
        with _Web(small, log_dir) as web:
            sizes[SMALL] = len(requests.get(f"{web.url}/deals", timeout=10).content)
    lines += [
        "",
        "| deals in the database | bytes of the first page (50 rows) |",
        "|---|---|",
        *(f"| {n:,} | {b:,} |" for n, b in sorted(sizes.items())),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as logs:
        print(run("quick", Path(logs)))
