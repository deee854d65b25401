"""``keepa-fleet check``: the first command to run with a real key.

It calls ``/token`` only (free) and reports whether the key works, the plan (refill rate, cap,
balance, time to full, ``tokenFlowReduction``), the clock difference between Keepa and this
machine, and what one deals page, one peek batch and one refresh batch cost at the current
settings and how many of each the plan affords per hour. ``--spend`` adds one ``/deal`` page
and one small ``/product`` call (charged) and reports their real cost and latency.

Exit status: 0 the key is usable, 1 the key is refused (400 malformed, 402 no access), 2 Keepa
did not answer (nothing listening, timeout, 5xx).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

from common.config import Settings, load_settings
from common.errors import (
    KeepaConnectionError,
    KeepaError,
    KeepaPaymentRequired,
    KeepaRequestRejected,
    KeepaServerError,
    KeepaTimeout,
)
from common.keepa import KeepaClient, TokenEnvelope

EXIT_USABLE = 0
EXIT_KEY_REFUSED = 1
EXIT_UNREACHABLE = 2
CAP_MINUTES = 60  # unused tokens expire after an hour: the cap is 60 x the refill rate
DEAL_PAGE_COST = 5
OFFER_PAGE_COST = 6
OFFERS_PER_PAGE = 10
SPEND_ASINS = 1  # the --spend /product call: one ASIN, no offers (1 token)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--spend",
        action="store_true",
        help="also make one /deal page and one 1-ASIN /product call (about 6 tokens) and "
        "report their real cost and latency (default: /token only, which is free)",
    )


def estimates(settings: Settings, refill_rate: int) -> dict[str, Any]:
    """What one batch of each stage costs at the current settings, and how many an hour the
    plan affords (refill_rate tokens a minute)."""
    w, k = settings.worker, settings.keepa
    per_offer_product = OFFER_PAGE_COST * math.ceil(w.offers / OFFERS_PER_PAGE)
    costs = {
        "deals_page": DEAL_PAGE_COST,
        "peek_batch": w.ingest_batch * per_offer_product,
        "refresh_batch": w.refresh_batch,
    }
    per_hour = refill_rate * 60
    return {
        "tokens_per_hour": per_hour,
        "peek_calls_per_batch": math.ceil(w.ingest_batch / k.max_asins_with_offers),
        "cost": costs,
        "per_hour": {name: per_hour // c if c else None for name, c in costs.items()},
    }


def plan(env: TokenEnvelope, now: float) -> dict[str, Any]:
    cap = CAP_MINUTES * env.refill_rate
    missing = max(0, cap - env.tokens_left)
    steps = math.ceil(missing / env.refill_rate) if env.refill_rate > 0 else None
    to_full = (
        None
        if steps is None
        else (0.0 if steps == 0 else env.refill_in_ms / 1000 + (steps - 1) * 60.0)
    )
    return {
        "refill_rate": env.refill_rate,
        "cap": cap,
        "balance": env.tokens_left,
        "time_to_full_s": to_full,
        "token_flow_reduction": env.token_flow_reduction,
        "clock_offset_s": round(env.timestamp_ms / 1000 - now, 3),
    }


def check(settings: Settings, *, spend: bool) -> tuple[int, dict[str, Any]]:
    client = KeepaClient.from_settings(settings)
    report: dict[str, Any] = {"base_url": settings.base_url, "simulated": settings.simulated}
    try:
        try:
            resp = client.token()
        except KeepaPaymentRequired:
            report.update(ok=False, verdict="this key has no access (HTTP 402)")
            return EXIT_KEY_REFUSED, report
        except KeepaRequestRejected:
            report.update(ok=False, verdict="the key is malformed (HTTP 400)")
            return EXIT_KEY_REFUSED, report
        except (KeepaConnectionError, KeepaTimeout, KeepaServerError) as exc:
            report.update(ok=False, verdict=f"Keepa is unreachable: {exc}")
            return EXIT_UNREACHABLE, report
        except KeepaError as exc:
            report.update(ok=False, verdict=f"unexpected answer: {exc}")
            return EXIT_UNREACHABLE, report
        report.update(ok=True, verdict="the key works", plan=plan(resp.envelope, time.time()))
        report["estimates"] = estimates(settings, resp.envelope.refill_rate)
        if spend:
            report["spent"] = _spend(client, settings)
        return EXIT_USABLE, report
    finally:
        client.close()


def _spend(client: KeepaClient, settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    selection = {"page": 0, "domainId": settings.keepa.domain, "priceTypes": [1], "sortType": 1}
    deal = client.deal(selection)
    out["deals_page"] = {
        "tokens": deal.tokens_consumed,
        "estimate": DEAL_PAGE_COST,
        "latency_s": round(deal.elapsed_s, 3),
    }
    dr = (deal.payload.get("deals") or {}).get("dr") or []
    asins = [d["asin"] for d in dr[:SPEND_ASINS] if isinstance(d, dict) and "asin" in d]
    if asins:
        prod = client.product(asins, domain=settings.keepa.domain, stats=90, history=False)
        out["product"] = {
            "asins": len(asins),
            "tokens": prod.tokens_consumed,
            "estimate": len(asins),
            "latency_s": round(prod.elapsed_s, 3),
        }
    return out


def render(report: dict[str, Any]) -> str:
    lines = [f"{report['base_url']}: {report['verdict']}"]
    p = report.get("plan")
    if p:
        full = p["time_to_full_s"]
        lines += [
            f"plan: {p['refill_rate']} tokens/min, cap {p['cap']}, balance {p['balance']}, "
            f"full in {'-' if full is None else f'{full:.0f} s'}, "
            f"tokenFlowReduction {p['token_flow_reduction']}",
            f"clock: Keepa minus this machine = {p['clock_offset_s']:+.3f} s",
        ]
        e = report["estimates"]
        for name, cost in e["cost"].items():
            lines.append(f"{name}: {cost} tokens at most, {e['per_hour'][name]} an hour")
    for name, s in (report.get("spent") or {}).items():
        lines.append(
            f"spent {name}: {s['tokens']} tokens (estimate {s['estimate']}), {s['latency_s']} s"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    code, report = check(settings, spend=args.spend)
    print(json.dumps(report, sort_keys=True) if args.json else render(report))
    return code
