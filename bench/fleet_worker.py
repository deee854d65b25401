"""One fleet process: the worker runtime's broker link and permit client around
``common.keepa.KeepaClient``, peeking its share of the backlog with ``offers=20``.

    python -m bench.fleet_worker --id ID --batch B --asins A1,A2,... [--offers 20 --stats 90]

Settings come from the environment the parent sets (``FLEET_BROKER``, ``KEEPA_BASE_URL``,
``KEEPA_API_KEY``, ``KEEPA_REFILL_PERIOD_S``), exactly as a worker under supervisord gets
them. It is the pipeline's peek without the database: each batch is one
``permits.call(cost, fn)`` with the cost from the fleet's own ``ProductCostModel`` (the
most the call can cost by Keepa's documented pricing, or the learned figure when
higher), and the model learns from every answer as the ingest stage does. Prints
``READY`` after imports, connects at ``GO``, prints ``PROGRESS {json}`` after each batch
and ``RESULT {json}`` at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from bench.harness import child_ready, child_result, child_wait_go
from common.config import load_settings
from common.costs import ProductCostModel, offers_bound_per_product
from common.errors import BrokerUnavailable, FleetError, KeepaNotEnoughTokens, PermitTimeout
from common.keepa import KeepaClient, KeepaResponse
from workers.link import BrokerLink
from workers.permit_client import BrokerPermitClient

CONNECT_TIMEOUT_S = 30.0
MAX_ATTEMPTS = 5  # per batch: a failed call is retried, as the ingest stage retries claims


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--id", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--offers", type=int, default=20)
    parser.add_argument("--stats", type=int, default=90)
    parser.add_argument("--asins", required=True)
    args = parser.parse_args()
    asins = [a for a in args.asins.split(",") if a]

    settings = load_settings()
    keepa = KeepaClient.from_settings(settings)
    costs = ProductCostModel(
        settings.worker.cost_per_product, bound_per_product=offers_bound_per_product(args.offers)
    )
    stop = threading.Event()
    link = BrokerLink(
        settings.broker.address,
        worker_id=args.id,
        role="bench",
        heartbeat_s=settings.broker.heartbeat_s,
        liveness=settings.broker.liveness,
        reconnect_max_s=settings.worker.reconnect_max_s,
    )
    permits = BrokerPermitClient(link, stop=stop, grant_wait_s=settings.worker.grant_wait_s)
    child_ready()
    child_wait_go()

    started = time.time()
    link.start()
    if not link.wait_ready(CONNECT_TIMEOUT_S):
        raise SystemExit(f"{args.id}: no WELCOME from the broker")
    done = calls = errors = tokens = 0
    overruns = overrun_tokens = 0  # calls that cost more than their permit, and by how much
    call_s_sum = 0.0
    # A batch that needed more than one attempt (a 429 another program caused, a timeout):
    # from its first attempt (sent, else asked) to the send that worked, the time the worker
    # lost on it (bench.gateway_mix reads it).
    lost_s = 0.0
    status_429 = 0
    last_send = started
    next_refill_at: float | None = None
    error_kinds: dict[str, int] = {}
    # [asked the broker, sent the HTTP request] per call: when it waited for tokens.
    intervals: list[list[float]] = []
    answered: list[float] = []  # when each answer came back (the SETTLE follows at once)

    def report() -> dict[str, Any]:
        return {
            "items": done,
            "calls": calls,
            "tokens": tokens,
            "overruns": overruns,
            "overrun_tokens": overrun_tokens,
            "call_s_sum": call_s_sum,
            "errors": errors,
            "error_kinds": error_kinds,
            "lost_s": lost_s,
            "status_429": status_429,
            "started": started,
            "last_send": last_send,
            "next_refill_at": next_refill_at,
            "cost_per_product": costs.per_product,
            "intervals": intervals,
            "answered": answered,
        }

    for i in range(0, len(asins), args.batch):
        chunk = asins[i : i + args.batch]
        first_try = 0.0  # when the first attempt of this batch was sent (else asked)
        for _ in range(MAX_ATTEMPTS):
            sent_at = [0.0]

            def fn(batch: list[str] = chunk, sent_at: list[float] = sent_at) -> KeepaResponse:
                sent_at[0] = time.time()
                return keepa.product(
                    batch,
                    domain=settings.keepa.domain,
                    stats=args.stats,
                    history=False,
                    offers=args.offers,
                )

            asked = time.time()
            cost = costs.estimate(len(chunk))
            try:
                resp = permits.call(cost, fn)
            except (BrokerUnavailable, PermitTimeout, FleetError) as exc:
                errors += 1
                status_429 += isinstance(exc, KeepaNotEnoughTokens)
                kind = type(exc).__name__
                error_kinds[kind] = error_kinds.get(kind, 0) + 1
                print(f"{args.id}: {kind}: {exc}"[:300], file=sys.stderr, flush=True)
                if isinstance(exc, BrokerUnavailable):
                    link.wait_ready(CONNECT_TIMEOUT_S)
                continue
            finally:
                if not first_try:
                    first_try = sent_at[0] or asked
                if sent_at[0]:
                    last_send = max(last_send, sent_at[0])
                    intervals.append([asked, sent_at[0]])
            calls += 1
            lost_s += max(0.0, sent_at[0] - first_try)
            call_s_sum += resp.elapsed_s
            answered.append(time.time())
            env = resp.envelope
            next_refill_at = (env.timestamp_ms + env.refill_in_ms) / 1000.0
            found = len(resp.payload.get("products") or [])
            costs.observe(env.tokens_consumed, found)
            tokens += env.tokens_consumed
            if env.tokens_consumed > cost:
                overruns += 1
                overrun_tokens += env.tokens_consumed - cost
            done += len(chunk)
            permits.advance("bench", len(chunk))
            break
        print("PROGRESS " + json.dumps(report()), flush=True)
    finished = time.time()
    link.close("bench done")
    child_result({**report(), "finished": finished})


if __name__ == "__main__":
    main()
