"""Benchmark 8: the fleet beside the unmodified ``keepa`` package at Keepa's own step.

Keepa's 60-s refill step with Keepa-like latency (an offer call ~5 s), one plan, N
processes on each side, the same backlog (deals from the simulator's feed, more than either
side can judge in the run) and the same time on a fresh, empty account each:

- the fleet: a broker and N ``keepa-fleet worker`` processes (ingest stage) on a queue of
  the backlog: the stats peek (1 token a product), offers bought for the survivors' commit;
- the peer: N ``bench.peer`` processes of the unmodified ``keepa`` package peeking its share
  ``offers=20``, 20 ASINs a call, as its users do, each product judged by the fleet's
  default filters (its 429 waits are the package's own: they assume this 60-s step).

Candidates judged and deals found per hour, and per 1,000 tokens; the goals: the fleet
judges ≥ 3 × and finds ≥ 1.5 × the deals per hour of the peer, 0 × 429, balance never
below ``-max_deficit``. Full profile only (about 10 minutes a side).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

import requests

from bench import backlog, results_per_token
from bench import harness as h
from common.config import BrokerSettings
from common.queries import DEFAULT_SELECTION

NAME = "keepa_step"
TITLE = "8. Fleet vs the keepa package at Keepa's own 60-s step"
PROFILES_BY_DEFAULT = ("full",)
SEED = 1
GOAL_JUDGED = 3.0
GOAL_DEALS = 1.5
MAX_DEFICIT = BrokerSettings().max_deficit  # the broker's default


@dataclasses.dataclass(frozen=True)
class Params:
    processes: tuple[int, ...]
    plan: int  # tokens a minute
    minutes: int  # per side
    backlog: int


PROFILES = {
    "quick": Params(processes=(4,), plan=300, minutes=3, backlog=1500),
    "full": Params(processes=(4, 16), plan=300, minutes=10, backlog=4000),
}
STEP_S = 60.0


def run(profile: str, log_dir: Path) -> str:
    p = PROFILES[profile]
    asins = feed_asins(p.backlog, log_dir)
    sides: dict[int, dict[str, dict[str, Any]]] = {}
    for n in p.processes:
        h.progress(f"{NAME}: fleet, N={n}, {p.minutes} min")
        rp = results_per_token.Params(
            workers=n, refill_rate=p.plan, refill_period_s=STEP_S, steps=p.minutes
        )
        fleet = results_per_token.run_fleet_on(rp, asins, log_dir / f"fleet-n{n}", p.minutes)
        h.progress(f"{NAME}: peer, N={n}, {p.minutes} min")
        spec = backlog.RunSpec(
            side="peer",
            processes=n,
            backlog=len(asins),
            batch=20,
            initial_tokens=0,
            refill_rate=p.plan,
            refill_period_s=STEP_S,
            latency_scale=1.0,
            time_limit_s=p.minutes * STEP_S,
            seed=SEED,
            asins=tuple(asins),
            peer_args=("--judge",),
        )
        peer = backlog.run_backlog(spec, log_dir, f"peer-n{n}")
        sides[n] = {"fleet": _fleet_figures(fleet), "peer": _peer_figures(peer)}
        h.progress(f"{NAME}: N={n}: {json.dumps(sides[n])}")
    return _report(p, len(asins), sides)


def feed_asins(count: int, log_dir: Path) -> list[str]:
    """The newest ``count`` deals of the default query, from a simulator of the same seed."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with h.owned_processes(log_dir) as procs:
        sim = h.start_sim(
            procs, refill_rate=300, refill_period_s=STEP_S, latency_scale=0.0, seed=SEED
        )
        key = "bench-feed-" + uuid.uuid4().hex[:12]
        sim.admin("tokens", key=key, tokens=100_000)
        out: list[str] = []
        for page in range(200):
            selection = {**DEFAULT_SELECTION, "page": page, "domainId": 1}
            resp = requests.get(
                f"{sim.url}/deal",
                params={"key": key, "selection": json.dumps(selection)},
                timeout=h.HTTP_TIMEOUT_S,
            )
            resp.raise_for_status()
            found = [d["asin"] for d in resp.json()["deals"]["dr"]]
            out += [a for a in found if a not in out]
            if len(out) >= count or not found:
                break
    if len(out) < count:
        raise h.BenchError(f"the feed gave {len(out)} deals, {count} wanted")
    return out[:count]


def _fleet_figures(r: dict[str, Any]) -> dict[str, Any]:
    v = r["verdicts"]
    st = r["state"]
    return {
        "judged": len(v),
        "deals": sum(1 for x in v.values() if x["verdict"] == "deal"),
        "used": int(st["tokens_consumed"]),
        "hours": r["elapsed_s"] / 3600.0,
        "status_429": int(st.get("status_429", 0)),
        "min_balance": int(st.get("min_tokens_left", 0)),
    }


def _peer_figures(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "judged": int(r["items"]),
        "deals": int(r["deals"]),
        "used": int(r["used"]),
        "hours": r["elapsed_s"] / 3600.0,
        "status_429": int(r["status_429"]),
        "min_balance": int(r["min_tokens_left"]),
    }


def _per(f: dict[str, Any], key: str) -> tuple[float, float]:
    per_h = f[key] / f["hours"] if f["hours"] else 0.0
    per_k = f[key] / f["used"] * 1000 if f["used"] else 0.0
    return per_h, per_k


def _report(p: Params, size: int, sides: dict[int, dict[str, dict[str, Any]]]) -> str:
    rows, goals = [], []
    for n, both in sides.items():
        for side in ("fleet", "peer"):
            f = both[side]
            jh, jk = _per(f, "judged")
            dh, dk = _per(f, "deals")
            rows.append(
                [
                    n,
                    side,
                    f["judged"],
                    f["deals"],
                    f["used"],
                    f"{jh:.0f}",
                    f"{dh:.0f}",
                    f"{jk:.0f}",
                    f"{dk:.1f}",
                    f["status_429"],
                    f["min_balance"],
                ]
            )
        fj, pj = _per(both["fleet"], "judged")[0], _per(both["peer"], "judged")[0]
        fd, pd = _per(both["fleet"], "deals")[0], _per(both["peer"], "deals")[0]
        rj = fj / pj if pj else float("inf")
        rd = fd / pd if pd else float("inf")
        goals += [
            [
                n,
                f"candidates judged per hour ≥ {GOAL_JUDGED:g} × the peer's",
                f"{rj:.2f} ×",
                h.verdict(rj >= GOAL_JUDGED),
            ],
            [
                n,
                f"deals found per hour ≥ {GOAL_DEALS:g} × the peer's",
                f"{rd:.2f} ×",
                h.verdict(rd >= GOAL_DEALS),
            ],
            [
                n,
                "fleet: 0 × 429",
                both["fleet"]["status_429"],
                h.verdict(both["fleet"]["status_429"] == 0),
            ],
            [
                n,
                f"fleet: balance never below -max_deficit ({MAX_DEFICIT})",
                both["fleet"]["min_balance"],
                h.verdict(both["fleet"]["min_balance"] >= -MAX_DEFICIT),
            ],
        ]
    intro = (
        f"Keepa's step ({STEP_S:g} s) and latency, a {p.plan}-a-minute plan, {p.minutes} "
        f"minutes a side on a fresh, empty account; the backlog: the newest {size} deals of "
        "the default query (seed 1), the same on both sides."
    )
    table = h.table(
        [
            "N",
            "side",
            "candidates judged",
            "deals found",
            "tokens used",
            "judged per hour",
            "deals per hour",
            "judged per 1,000 tokens",
            "deals per 1,000 tokens",
            "429s",
            "lowest balance",
        ],
        rows,
    )
    return "\n\n".join([intro, table, h.table(["N", "goal", "measured", "verdict"], goals)])
