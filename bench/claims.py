"""Claims per second, PostgreSQL beside SQLite in the same run: 8 worker processes
(``bench.claims_worker``) claim 10 candidates and commit them as deals, over and over, for a
few seconds, on a queue filled beforehand (the same rows on both: the SQLite file is filled,
then ``keepa-fleet db copy`` moves it to PostgreSQL, which is timed too).

PostgreSQL runs as a throw-away cluster on this machine (``tests/pg_support.py``: fsync off,
as in the tests), so the figure is the backends' locking and round trips, not a disk.
Without PostgreSQL binaries the section says so and shows SQLite alone.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import harness
from common.db_copy import copy_database
from common.storage import Storage

sys.path.insert(0, str(harness.ROOT / "tests"))  # the tests' cluster helper (its one owner)
from pg_support import PgCluster, pg_binaries

NAME = "claims"
TITLE = "Storage: claims per second, PostgreSQL vs SQLite (8 worker processes)"
WORKERS = 8
BATCH = 10
SECONDS = {"quick": 5.0, "full": 15.0}
REPEATS = {"quick": 1, "full": 3}
QUEUE_PER_SECOND = 12_000  # candidates queued per second of run: far more than gets claimed
D = 1


def fill(path: Path, n: int) -> None:
    with Storage.open(str(path)) as s:
        s.add_candidates(D, [f"B{i:09d}" for i in range(n)], source="bench", now=time.time())


def one_run(target: str, seconds: float, log_dir: Path, label: str) -> dict[str, Any]:
    with harness.owned_processes(log_dir) as procs:
        children = [
            procs.start(
                f"{label}_{i}",
                harness.python_command(
                    "bench.claims_worker",
                    "--db",
                    target,
                    "--owner",
                    f"w{i}",
                    "--seconds",
                    str(seconds),
                    "--batch",
                    str(BATCH),
                ),
                pipes=True,
            )
            for i in range(WORKERS)
        ]
        harness.wait_ready(children)
        for c in children:
            c.send("GO")
        results = harness.collect_results(children, seconds + 60)
    claimed = sum(int(r["claimed"]) for r in results)
    longest = max(float(r["seconds"]) for r in results)
    with Storage.open(target) as s:
        check = s.integrity_check()
        deals = s.totals()["deals_live"]
    if check != "ok" or deals != claimed:
        raise harness.BenchError(f"{label}: {deals} deals for {claimed} claims; check {check}")
    return {"claims_per_s": claimed / longest, "claimed": claimed}


def run(profile: str, log_dir: Path) -> str:
    seconds = SECONDS[profile]
    n = int(QUEUE_PER_SECOND * seconds)
    runs: dict[str, list[dict[str, Any]]] = {"SQLite": [], "PostgreSQL": []}
    copy_rate: list[float] = []
    cluster = PgCluster() if pg_binaries() is not None else None
    try:
        if cluster is not None:
            cluster.start()
        with tempfile.TemporaryDirectory() as tmp:
            for rep in range(REPEATS[profile]):
                lite = Path(tmp) / f"claims_{rep}.db"
                fill(lite, n)
                if cluster is not None:
                    pg = cluster.new_database()
                    t0 = time.monotonic()
                    copied = copy_database(str(lite), pg)
                    copy_rate.append(sum(copied.rows.values()) / (time.monotonic() - t0))
                    runs["PostgreSQL"].append(one_run(pg, seconds, log_dir, f"pg{rep}"))
                    cluster.drop_database(pg)
                runs["SQLite"].append(one_run(str(lite), seconds, log_dir, f"sqlite{rep}"))
    finally:
        if cluster is not None:
            cluster.stop()
    rows = []
    for backend, results in runs.items():
        if not results:
            rows.append([backend, "not measured (no PostgreSQL binaries here)", ""])
            continue
        fig = harness.figures(results, "claims_per_s")
        rows.append([backend, fig.fmt(".0f"), sum(r["claimed"] for r in results)])
    text = harness.table(["backend", "claims/s (8 processes)", "candidates claimed"], rows)
    lite_fig = harness.figures(runs["SQLite"], "claims_per_s")
    if runs["PostgreSQL"]:
        pg_fig = harness.figures(runs["PostgreSQL"], "claims_per_s")
        text += (
            f"\n\nPostgreSQL / SQLite: {pg_fig.median / lite_fig.median:.2f}× (baseline: SQLite, "
            "the same queue, the same processes, the same run). "
            f"`db copy` SQLite → PostgreSQL: {harness.Figure(copy_rate).fmt('.0f')} rows/s."
        )
    text += (
        f"\n\nEach process: claim {BATCH}, commit them as deals, repeat for {seconds:g} s; "
        f"{REPEATS[profile]} repeat(s); the queue holds {n} candidates so it never runs dry. "
        "Both servers on this machine (PostgreSQL with fsync off, SQLite in WAL with "
        "synchronous=NORMAL): no network round trip, which a second host adds."
    )
    return text


if __name__ == "__main__":
    print(run("quick", Path(tempfile.mkdtemp())))
