"""``keepa-fleet queries``: list the deal queries of the settings, check them, and show what
each costs an hour at its interval and what share of the plan that is.

The settings are loaded (and so checked) as every process loads them: a bad query exits 78
naming the file, the query and the key. The plan is ``--refill-rate`` tokens a minute, else
``sim.refill_rate`` on the simulator; with a real key it is unknown unless given.
"""

from __future__ import annotations

import argparse
import json

from common.config import load_settings
from common.queries import describe, queries_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--refill-rate",
        type=int,
        default=None,
        metavar="N",
        help="the plan, tokens a minute (default: sim.refill_rate on the simulator)",
    )


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    rate = args.refill_rate
    if rate is None and settings.simulated:
        rate = settings.sim.refill_rate
    rows = describe(queries_of(settings), rate)
    if args.json:
        print(json.dumps({"refill_rate": rate, "queries": rows}, indent=2))
        return 0
    print(f"{len(rows)} deal quer{'y' if len(rows) == 1 else 'ies'} OK; plan {rate or '?'}/min")
    for r in rows:
        share = f"{r['plan_share'] * 100:.2f} %" if r["plan_share"] is not None else "?"
        print(
            f"  {r['name']}: domain {r['domain']}, sortType {r['sort_type']} ({r['scan']}), "
            f"every {r['every_s']:g} s, judges price type {r['price_type']}, "
            f"{r['tokens_per_hour']:g} tokens/h ({share} of the plan)"
            + (", notify" if r["notify"] else "")
            + f"  [{r['source']}]"
        )
        for w in r["warnings"]:
            print(f"    warning: {w}")
    return 0
