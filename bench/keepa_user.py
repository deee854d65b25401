"""One "other program on the key": the unmodified ``keepa`` package (1.6.0) querying its
share of ASINs, either through the gateway or straight at the simulator.

    python -m bench.keepa_user --mode gateway --url GATEWAY_URL --client NAME --batch B --asins ...
    python -m bench.keepa_user --mode direct --url SIM_URL --key KEY --batch B --asins ...

``gateway``: the two lines a user writes (``gateway.client.use_gateway``), the key given to
the package is a dummy (the gateway drops it). ``direct``: the one change the peer of
benchmark 1 makes (``bench.peer.redirect_keepa_http``: ``https://api.keepa.com`` becomes
the simulator), with the account's key. Either way the package keeps its own behaviour
(its token bookkeeping, its 429 sleep ``time_to_refill``). Its "Waiting N seconds" warnings
are counted through a logging handler (one per 429 it met). Prints ``READY``, waits for
``GO``, prints ``PROGRESS {json}`` after each batch and ``RESULT {json}`` at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from bench.harness import child_ready, child_result, child_wait_go
from bench.peer import PEER_TIMEOUT_S, STATS_DAYS, _WaitLog, redirect_keepa_http


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("gateway", "direct"), required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", default="not-the-key")
    parser.add_argument("--client", default="local")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--offers", type=int, default=20)
    parser.add_argument("--asins", required=True)
    args = parser.parse_args()
    asins = [a for a in args.asins.split(",") if a]

    if args.mode == "direct":
        redirect_keepa_http(args.url)
    import keepa

    waits = _WaitLog()
    logging.getLogger("keepa").addHandler(waits)
    logging.getLogger("keepa").propagate = False
    api = keepa.Keepa(args.key, timeout=PEER_TIMEOUT_S, logging_level="INFO")
    if args.mode == "gateway":
        from gateway.client import use_gateway

        use_gateway(api, args.url, client=args.client)
    child_ready()
    child_wait_go()

    started = time.time()
    done = calls = errors = 0
    query_s: list[float] = []

    def report() -> dict[str, Any]:
        return {
            "items": done,
            "calls": calls,
            "errors": errors,
            "started": started,
            "status_429": len(waits.waits),
            "waits_s": waits.waits_s,
            "query_s": query_s,
            "sleeping_until": None,
        }

    def on_wait() -> None:
        t, w = waits.waits[-1]
        print("PROGRESS " + json.dumps({**report(), "sleeping_until": t + w}), flush=True)

    waits.on_wait = on_wait
    for i in range(0, len(asins), args.batch):
        chunk = asins[i : i + args.batch]
        t0 = time.time()
        try:
            api.query(
                chunk, offers=args.offers, stats=STATS_DAYS, history=False, progress_bar=False
            )
            done += len(chunk)
            calls += 1
        except Exception as exc:  # the package raises RuntimeError for error statuses
            errors += 1
            print(f"keepa_user: query failed: {type(exc).__name__}: {exc}"[:300], file=sys.stderr)
        query_s.append(time.time() - t0)
        print("PROGRESS " + json.dumps(report()), flush=True)
    child_result({**report(), "finished": time.time()})


if __name__ == "__main__":
    main()
