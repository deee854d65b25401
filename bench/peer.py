"""One peer process: the unmodified ``keepa`` package from PyPI, querying its share of the
backlog with ``offers=20``. The only change is where its HTTP goes (``redirect_keepa_http``).

    python -m bench.peer --sim URL --key KEY --batch B --asins A1,A2,...

Prints ``READY`` once the package is imported and the client built, waits for ``GO`` on
stdin, then calls ``Keepa.query`` on each batch of its share in turn (as a user's scanner
would) and prints ``RESULT {json}``. The package keeps its own behaviour: it sends without
looking at the balance and, on a 429, sleeps ``time_to_refill`` and retries (``wait=True``,
its default). Its "Waiting N seconds for additional tokens" log lines are counted through a
logging handler (reading its log, not changing it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import requests

from bench.harness import child_ready, child_result, child_wait_go

KEEPA_ORIGIN = "https://api.keepa.com"
# The peer's HTTP timeout: the package's constructor argument (default 10 s), set to the
# fleet's read timeout because offer calls take up to 20 s. Not a change to its logic.
PEER_TIMEOUT_S = 60.0
STATS_DAYS = 90


# =========================================================================================
# THE ONLY CHANGE TO THE PEER: where its HTTP requests go.
# keepa 1.6.0 sends every request with the module-level ``requests.get(
# f"https://api.keepa.com/{request_type}/?", payload, headers=..., timeout=...)``
# (keepa/keepa_sync.py, ``Keepa._request``). This wraps ``requests.get`` so that a URL on
# https://api.keepa.com goes to the simulator instead; parameters, headers, timeout and all
# the package does with the answer (its token bookkeeping and its 429 wait) are untouched.
# It also notes when each /product request leaves (the report reads it; the package never
# does).
# =========================================================================================
REQUESTS_AT: list[float] = []


def redirect_keepa_http(sim_url: str) -> None:
    real_get = requests.get

    def get(url: str, *args: Any, **kwargs: Any) -> requests.Response:
        if url.startswith(KEEPA_ORIGIN):
            url = sim_url.rstrip("/") + url[len(KEEPA_ORIGIN) :]
        if "/product" in url:
            REQUESTS_AT.append(time.time())
        return real_get(url, *args, **kwargs)

    requests.get = get  # type: ignore[assignment]


class _WaitLog(logging.Handler):
    """Counts the package's own 'Waiting N seconds for additional tokens' warnings (logged
    right before it sleeps) and tells ``on_wait`` about each."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.waits: list[tuple[float, float]] = []  # (logged at, seconds)
        self.on_wait: Callable[[], None] | None = None

    @property
    def waits_s(self) -> list[float]:
        return [w for _, w in self.waits]

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if record.getMessage().startswith("Waiting") and isinstance(args, tuple) and args:
            seconds = args[0]
            if isinstance(seconds, int | float):
                self.waits.append((record.created, float(seconds)))
                if self.on_wait is not None:
                    self.on_wait()


def _next_refill_at(api: Any) -> float | None:
    """An epoch instant of a refill step, from the last envelope the package kept."""
    st = api.status
    if st.timestamp is None or st.refillIn is None:
        return None
    return (float(st.timestamp) + float(st.refillIn)) / 1000.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sim", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--offers", type=int, default=20)
    parser.add_argument("--asins", required=True)
    parser.add_argument(
        "--judge",
        action="store_true",
        help="judge each product with the fleet's default filters, as a user's scanner "
        "does with what it bought, and report the deals found",
    )
    args = parser.parse_args()
    asins = [a for a in args.asins.split(",") if a]

    redirect_keepa_http(args.sim)
    import keepa

    waits = _WaitLog()
    logging.getLogger("keepa").addHandler(waits)
    logging.getLogger("keepa").propagate = False
    api = keepa.Keepa(args.key, timeout=PEER_TIMEOUT_S, logging_level="INFO")
    child_ready()
    child_wait_go()

    judge: Callable[[dict[str, Any]], bool] | None = None
    if args.judge:
        from common.config import FilterSettings
        from workers.filters import check, facts

        filters = FilterSettings()

        def judge(product: dict[str, Any]) -> bool:
            return product.get("productType") == 0 and check(facts(product), filters) is None

    started = time.time()
    done = calls = errors = deals = 0

    def report() -> dict[str, Any]:
        return {
            "items": done,
            "deals": deals,
            "calls": calls,
            "errors": errors,
            "started": started,
            "last_send": REQUESTS_AT[-1] if REQUESTS_AT else started,
            "sends": REQUESTS_AT,
            # When a process slept in the package's 429 wait: it was waiting for tokens.
            "intervals": [[t, t + w] for t, w in waits.waits],
            "waits_s": waits.waits_s,
            "next_refill_at": _next_refill_at(api),
            "sleeping_until": None,
        }

    def on_wait() -> None:
        t, w = waits.waits[-1]
        print("PROGRESS " + json.dumps({**report(), "sleeping_until": t + w}), flush=True)

    waits.on_wait = on_wait

    for i in range(0, len(asins), args.batch):
        chunk = asins[i : i + args.batch]
        try:
            products = api.query(
                chunk, offers=args.offers, stats=STATS_DAYS, history=False, progress_bar=False
            )
            done += len(chunk)
            if judge is not None:
                deals += sum(1 for p in products if judge(p))
            calls += 1
        except Exception as exc:  # the package raises RuntimeError for error statuses
            errors += 1
            print(f"peer: query failed: {type(exc).__name__}: {exc}"[:300], file=sys.stderr)
        print("PROGRESS " + json.dumps(report()), flush=True)
    child_result({**report(), "finished": time.time()})


if __name__ == "__main__":
    main()
