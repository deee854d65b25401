"""Benchmark 6: results per token. The real pipeline (``keepa-fleet worker``, every stage)
with the stats peek (the default: 1 token a product, offers bought for the survivors'
commit only) and with the offers peek (``worker.peek_offers``: 6-12 tokens a product, as
the system this one replaces and the ``keepa`` package's users peek), same seed, same plan,
same number of refill steps.

Time runs in Keepa's proportions: the refill step P is shortened and the simulator's
latency with it (``latency × P / 60 s``: an offer call of ~5 s against a 60-s step becomes
~5 × P / 60 s), so a call lasts the same fraction of a step as on Keepa. Figures "per hour"
are per hour of Keepa time (60 steps). Each side has a simulator, a broker and a database of
its own and starts from an empty account (the supply is the refills alone), with more deals
in the feed than the run can judge.

The sides judge the feed in the same order (newest deals first), so most ASINs are judged by
both: the verdicts on those are compared, and every ASIN that is a deal on one side only is
listed with the figures each side saw.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from bench import harness as h
from common.storage import Storage

NAME = "results_per_token"
TITLE = "6. Results per token: the stats peek vs the offers peek"
SEED = 1
SIDES = ("stats peek", "offers peek")
DOMAIN = 1  # the default query's marketplace
DEAL_CACHE_S = 120.0
FEED_INTERVAL_S = 0.5  # a new deal every 0.5 s of Keepa time


@dataclasses.dataclass(frozen=True)
class Params:
    workers: int
    refill_rate: int  # tokens per step: the plan, "tokens a minute" on Keepa
    refill_period_s: float
    steps: int

    @property
    def latency_scale(self) -> float:
        return self.refill_period_s / 60.0


PROFILES = {
    "quick": Params(workers=4, refill_rate=250, refill_period_s=2.0, steps=40),
    "full": Params(workers=4, refill_rate=250, refill_period_s=6.0, steps=60),
}


def run(profile: str, log_dir: Path) -> str:
    p = PROFILES[profile]
    results = {}
    for side in SIDES:
        h.progress(f"{NAME}: {side}, {p.workers} workers, {p.steps} steps of {p.refill_period_s} s")
        results[side] = _run_side(p, side, log_dir / side.replace(" ", "_"))
    # Same ASINs: the stats peek on exactly what the offers peek judged, to the last one.
    asins = sorted(results[SIDES[1]]["verdicts"])
    h.progress(f"{NAME}: stats peek on the {len(asins)} ASINs the offers peek judged")
    again = _run_side(p, SIDES[0], log_dir / "same_asins", preload=asins)
    return _report(p, results, again)


def _run_side(
    p: Params,
    side: str,
    log_dir: Path,
    preload: list[str] | None = None,
    limit_steps: int | None = None,
) -> dict[str, Any]:
    """One side's run: every stage for ``p.steps`` steps, or with ``preload`` the ingest
    stage alone on those candidates until none is left (at most ``limit_steps``, default
    4 × ``p.steps``). The account starts empty."""
    log_dir.mkdir(parents=True)
    db = log_dir / "fleet.db"
    if preload:
        storage = Storage.open(str(db))
        try:
            storage.add_candidates(DOMAIN, preload, source="bench", now=time.time())
        finally:
            storage.close()
    role = "ingest" if preload else "all"
    with h.owned_processes(log_dir) as procs:
        sim = h.start_sim(
            procs,
            refill_rate=p.refill_rate,
            refill_period_s=p.refill_period_s,
            latency_scale=p.latency_scale,
            seed=SEED,
            # The feed on Keepa's clock too (the simulator's default, a deal every 0.5 s, is
            # 120 a step): more deals than the plan can judge.
            deal_interval_s=FEED_INTERVAL_S * p.latency_scale,
            deal_cache_s=DEAL_CACHE_S * p.latency_scale,  # Keepa's 120-s deal cache, scaled
        )
        key = "bench-rpt-" + uuid.uuid4().hex[:12]
        sim.admin("tokens", key=key, tokens=0)
        address = f"tcp://127.0.0.1:{h.free_port()}"
        env = h.broker_env(address, sim.url, key, p.refill_period_s)
        # Scans and refreshes on Keepa's clock: the pause between scans is one step, and no
        # deal is old enough for a refresh within the run (both sides alike).
        env["FLEET_WORKER_DEALS_INTERVAL_S"] = str(p.refill_period_s)
        env["FLEET_WORKER_REFRESH_AFTER_S"] = str(3600.0 * 24)
        env["FLEET_WORKER_PEEK_OFFERS"] = "1" if side == "offers peek" else "0"
        h.start_broker(procs, env)
        started = time.monotonic()
        for i in range(p.workers):
            procs.start(
                f"w{i}",
                h.fleet_command("worker", "--id", f"w{i}", "--role", role, "--db", str(db)),
                env=env,
            )
        if limit_steps is None:
            limit_steps = 4 * p.steps if preload else p.steps
        run_s = limit_steps * p.refill_period_s
        deadline = started + run_s
        next_line = started
        while time.monotonic() < deadline:
            if preload and waiting(db) == 0:
                break
            if time.monotonic() >= next_line:
                st = sim.state(key)
                h.progress(
                    f"{NAME}: {side}: {time.monotonic() - started:.0f}/{run_s:.0f} s, "
                    f"{st['tokens_consumed']} tokens used"
                )
                next_line += max(10.0, run_s / 6)
            time.sleep(0.5)
        state = sim.state(key)
        elapsed_s = time.monotonic() - started
        procs.stop_all()
    return {"state": state, "elapsed_s": elapsed_s, "verdicts": verdicts(db)}


def run_fleet_on(p: Params, asins: list[str], log_dir: Path, limit_steps: int) -> dict[str, Any]:
    """The stats-peek pipeline (ingest only) on a queue of ``asins``: state, time,
    verdicts (for benchmark 8)."""
    return _run_side(p, SIDES[0], log_dir, preload=asins, limit_steps=limit_steps)


def waiting(db: Path) -> int:
    """Candidates not judged yet (queued or claimed)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT count(*) FROM candidates").fetchone()[0])
    finally:
        conn.close()


def verdicts(db: Path) -> dict[str, dict[str, Any]]:
    """Every judged ASIN: 'deal' or its rejection reason, with the figures seen."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out: dict[str, dict[str, Any]] = {}
        for asin, current, avg90, rank, offers in conn.execute(
            "SELECT asin, current, avg90, sales_rank, offers FROM deals"
        ):
            out[asin] = {
                "verdict": "deal",
                "figures": {"current": current, "avg90": avg90, "rank": rank, "offers": offers},
            }
        for asin, reason, detail in conn.execute("SELECT asin, reason, detail FROM rejections"):
            out[asin] = {"verdict": reason, "figures": json.loads(detail or "{}")}
        return out
    finally:
        conn.close()


def _report(p: Params, results: dict[str, dict[str, Any]], again: dict[str, Any]) -> str:
    rows = []
    figures: dict[str, dict[str, float]] = {}
    for side in SIDES:
        r = results[side]
        st, verdicts = r["state"], r["verdicts"]
        used = int(st["tokens_consumed"])
        judged = len(verdicts)
        deals = sum(1 for v in verdicts.values() if v["verdict"] == "deal")
        hours = p.steps / 60.0  # Keepa time
        f = {
            "judged_per_1k": judged / used * 1000 if used else 0.0,
            "deals_per_1k": deals / used * 1000 if used else 0.0,
            "judged_per_h": judged / hours,
            "deals_per_h": deals / hours,
            "429": float(st.get("status_429", 0)),
        }
        figures[side] = f
        supplied = p.refill_rate * p.steps
        rows.append(
            [
                side,
                judged,
                deals,
                f"{used} / {supplied}",
                f"{f['judged_per_1k']:.0f}",
                f"{f['deals_per_1k']:.1f}",
                f"{f['judged_per_h']:.0f}",
                f"{f['deals_per_h']:.0f}",
                st.get("status_429", 0),
                st.get("min_tokens_left", "–"),
            ]
        )
    cheap, dear = figures[SIDES[0]], figures[SIDES[1]]
    table = h.table(
        [
            "peek",
            "candidates judged",
            "deals found",
            "tokens used / supplied",
            "judged per 1,000 tokens",
            "deals per 1,000 tokens",
            "judged per hour",
            "deals per hour",
            "429s",
            "lowest balance",
        ],
        rows,
    )

    def ratio(key: str) -> str:
        return f"{cheap[key] / dear[key]:.2f} ×" if dear[key] else "n/a"

    ratios = h.table(
        ["figure", "stats peek ÷ offers peek (same run)"],
        [
            ["candidates judged per 1,000 tokens", ratio("judged_per_1k")],
            ["deals found per 1,000 tokens", ratio("deals_per_1k")],
            ["candidates judged per hour", ratio("judged_per_h")],
            ["deals found per hour", ratio("deals_per_h")],
        ],
    )
    a, b = again["verdicts"], results[SIDES[1]]["verdicts"]
    both = sorted(set(a) & set(b))
    unjudged = len(b) - len(both)
    differ = [x for x in both if (a[x]["verdict"] == "deal") != (b[x]["verdict"] == "deal")]
    lost = [x for x in differ if b[x]["verdict"] == "deal"]
    again_used = int(again["state"]["tokens_consumed"])
    lines = [
        f"One simulated account per side: {p.refill_rate} tokens per {p.refill_period_s:g}-s "
        f"refill step (Keepa's {p.refill_rate}-a-minute plan with the step shortened "
        f"{60 / p.refill_period_s:g}×, latency and the deal feed's pace (a new deal every "
        f"{FEED_INTERVAL_S:g} s of Keepa time) with it), starting "
        f"empty; {p.workers} `keepa-fleet worker` processes (every stage) on a database of "
        f"their own; {p.steps} steps ({p.steps / 60:.2f} h of Keepa time); refresh out of "
        "the way (no deal is due within the run). Per hour = per 60 steps.",
        "",
        table,
        "",
        ratios,
        "",
        f"Same ASINs: the {len(b)} ASINs the offers peek judged were then given, as a "
        f"queue, to a fresh stats-peek fleet (ingest only, same plan, same seed): it judged "
        f"{len(both)} of them ({unjudged} left when its time ran out) for {again_used} tokens "
        f"(the offers peek: {int(results[SIDES[1]]['state']['tokens_consumed'])} tokens, deal "
        f"pages included); {len(differ)} a deal on one side only, {len(lost)} of them found by "
        "the offers peek and not by the stats peek.",
    ]
    for asin in differ[:10]:
        lines.append(
            f"- {asin}: stats peek {a[asin]['verdict']} {a[asin]['figures']}; "
            f"offers peek {b[asin]['verdict']} {b[asin]['figures']} (the two sides judged "
            "it minutes apart: the simulator's prices move with time, as Keepa's do)"
        )
    lines += [
        "",
        h.table(
            ["goal", "measured", "verdict"],
            [
                [
                    "the stats peek loses no deal the offers peek finds (same ASINs)",
                    f"{len(lost)} lost of {len(both)}",
                    h.verdict(not lost and not unjudged and bool(both)),
                ],
                [
                    "0 × 429 on either side",
                    f"{cheap['429']:.0f} / {dear['429']:.0f}",
                    h.verdict(cheap["429"] == 0 and dear["429"] == 0),
                ],
            ],
        ),
    ]
    return "\n".join(lines)
