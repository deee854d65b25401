"""One process of the claims benchmark (``bench.claims``): open the database, say READY, wait
for GO, then claim and finish candidates for the run's seconds, and print the RESULT.

A turn is what a worker's ingest does to the queue: claim ``batch`` candidates (``FOR UPDATE
SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), then one transaction committing
them as deals (the candidates leave the queue). Claims counted: candidates claimed."""

from __future__ import annotations

import argparse
import time

from bench import harness
from common.storage import Storage

D = 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--owner", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--batch", type=int, default=10)
    args = parser.parse_args()
    storage = Storage.open(args.db)
    harness.child_ready()
    harness.child_wait_go()
    claimed = turns = 0
    started = time.monotonic()
    end = started + args.seconds
    while time.monotonic() < end:
        now = time.time()
        asins = storage.claim_candidates(D, args.owner, args.batch, now=now, ttl_s=300)
        if not asins:
            break  # the queue ran dry: the parent sizes it so that this does not happen
        storage.commit_deals(D, [{"asin": a, "title": a, "current": 1} for a in asins], now)
        claimed += len(asins)
        turns += 1
    elapsed = time.monotonic() - started
    storage.close()
    harness.child_result({"claimed": claimed, "turns": turns, "seconds": elapsed})


if __name__ == "__main__":
    main()
