"""Benchmark 9: use it or lose it. Keepa drops what lies above the cap (60 × the rate), so a
fleet whose backlog runs out wastes its plan every step unless it finds useful work.

The real fleet (every stage) on a full account, a deal feed slower than the plan can judge
(the backlog runs out within the first steps), refresh on Keepa's clock (a deal is due an
hour of Keepa time after its last update), steps of P seconds with the latency scaled
(× P / 60 s). Two sides, same seed: ``worker.spend_spare`` on (the default: the broker's
heartbeat says what the next refill would drop, and the refresh stage refreshes the
stalest deals early on it) and off. The simulator counts the tokens lost to the cap.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from bench import harness as h
from workers.stages.refresh import SPARE_MIN_AGE_FRACTION

NAME = "use_it"
TITLE = "9. Use it or lose it: tokens lost to the cap when the backlog runs out"
SEED = 1
SIDES = ("spend_spare on", "spend_spare off")


@dataclasses.dataclass(frozen=True)
class Params:
    workers: int
    plan: int
    refill_period_s: float
    steps: int
    deal_interval_s: float  # real seconds: a feed slower than the plan


PROFILES = {
    "quick": Params(workers=2, plan=100, refill_period_s=2.0, steps=60, deal_interval_s=0.5),
    "full": Params(workers=4, plan=250, refill_period_s=4.0, steps=90, deal_interval_s=0.5),
}


def run(profile: str, log_dir: Path) -> str:
    p = PROFILES[profile]
    out = {}
    for side in SIDES:
        h.progress(f"{NAME}: {side}")
        out[side] = _side(p, side == SIDES[0], log_dir / side.replace(" ", "_"))
    return _report(p, out)


def _side(p: Params, spend: bool, log_dir: Path) -> dict[str, Any]:
    log_dir.mkdir(parents=True)
    db = log_dir / "fleet.db"
    scale = p.refill_period_s / 60.0
    with h.owned_processes(log_dir) as procs:
        sim = h.start_sim(
            procs,
            refill_rate=p.plan,
            refill_period_s=p.refill_period_s,
            latency_scale=scale,
            seed=SEED,
            deal_interval_s=p.deal_interval_s,
            deal_cache_s=120.0 * scale,  # Keepa's 120-s deal cache, on Keepa's clock
        )
        key = "bench-use-" + uuid.uuid4().hex[:12]
        address = f"tcp://127.0.0.1:{h.free_port()}"
        env = h.broker_env(address, sim.url, key, p.refill_period_s)
        env["FLEET_WORKER_DEALS_INTERVAL_S"] = str(60.0 * scale)
        env["FLEET_WORKER_REFRESH_AFTER_S"] = str(3600.0 * scale)
        env["FLEET_WORKER_SPEND_SPARE"] = "1" if spend else "0"
        h.start_broker(procs, env)
        s0 = sim.state(key)  # created full (the simulator's default start)
        for i in range(p.workers):
            procs.start(
                f"w{i}",
                h.fleet_command("worker", "--id", f"w{i}", "--role", "all", "--db", str(db)),
                env=env,
            )
        deadline = time.monotonic() + p.steps * p.refill_period_s
        # Deals become refreshable early once a tenth of the refresh period has passed since
        # they were committed: from then on no token should be lost (snapshot sw).
        refresh_s = 3600.0 * scale
        first_deal_at: float | None = None
        sw: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if first_deal_at is None and _deals(db) > 0:
                first_deal_at = time.monotonic()
            if (
                sw is None
                and first_deal_at is not None
                and time.monotonic() >= first_deal_at + SPARE_MIN_AGE_FRACTION * refresh_s
            ):
                sw = sim.state(key)
        s1 = sim.state(key)
        procs.stop_all()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        deals = conn.execute("SELECT count(*), coalesce(sum(refreshes), 0) FROM deals").fetchone()
        rejections = conn.execute("SELECT count(*) FROM rejections").fetchone()[0]
    finally:
        conn.close()
    return {
        "used": int(s1["tokens_consumed"]) - int(s0["tokens_consumed"]),
        "lost": int(s1["tokens_lost_to_cap"]) - int(s0["tokens_lost_to_cap"]),
        "lost_refreshable": (
            int(s1["tokens_lost_to_cap"]) - int(sw["tokens_lost_to_cap"]) if sw else None
        ),
        "supplied": p.plan * (int(s1["refill_steps"]) - int(s0["refill_steps"])),
        "status_429": int(s1["status_429"]),
        "min_balance": int(s1["min_tokens_left"]),
        "deals_live": int(deals[0]),
        "refreshes": int(deals[1]),
        "judged": int(deals[0]) + int(rejections),
    }


def _deals(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT count(*) FROM deals").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0  # not created yet


def _report(p: Params, out: dict[str, dict[str, Any]]) -> str:
    rows = [
        [
            side,
            f"{r['used']} / {r['supplied']}",
            r["lost"],
            "–" if r["lost_refreshable"] is None else r["lost_refreshable"],
            r["judged"],
            r["deals_live"],
            r["refreshes"],
            r["status_429"],
            r["min_balance"],
        ]
        for side, r in out.items()
    ]
    on, off = out[SIDES[0]], out[SIDES[1]]
    intro = (
        f"{p.workers} `keepa-fleet worker` processes (every stage) on a full account of "
        f"{p.plan} tokens a {p.refill_period_s:g}-s step (cap {60 * p.plan}), latency × "
        f"{p.refill_period_s / 60:.3f}, a new deal every {p.deal_interval_s:g} s (real time: "
        f"fewer than the plan can judge), {p.steps} steps; a deal is due a refresh an hour "
        "of Keepa time after its last update."
    )
    table = h.table(
        [
            "side",
            "tokens used / refilled",
            "lost to the cap",
            "… of them once deals were refreshable",
            "candidates judged",
            "deals live",
            "refreshes",
            "429s",
            "lowest balance",
        ],
        rows,
    )
    goals = h.table(
        ["goal", "measured", "verdict"],
        [
            [
                "fewer tokens lost to the cap with spend_spare than without (same run)",
                f"{on['lost']} vs {off['lost']}",
                h.verdict(on["lost"] < off["lost"] or off["lost"] == 0),
            ],
            [
                "0 lost while refreshable deals exist",
                on["lost_refreshable"],
                h.verdict(on["lost_refreshable"] == 0),
            ],
            [
                "due work not slowed: candidates judged with spend_spare ≥ 0.95 × without",
                f"{on['judged']} vs {off['judged']}",
                h.verdict(on["judged"] >= 0.95 * off["judged"]),
            ],
            [
                "0 × 429",
                f"{on['status_429']} / {off['status_429']}",
                h.verdict(on["status_429"] == 0 and off["status_429"] == 0),
            ],
        ],
    )
    min_age_s = SPARE_MIN_AGE_FRACTION * 3600.0 * p.refill_period_s / 60.0
    pool_rate = on["deals_live"] / min_age_s  # tokens/s the early refresh can spend at most
    supply_rate = p.plan / p.refill_period_s
    bounds = (
        "What bounds the loss with spend_spare on: an early refresh takes only deals not "
        f"refreshed in the last {SPARE_MIN_AGE_FRACTION:g} of the refresh period "
        f"({min_age_s:g} s here), so {on['deals_live']} live deals can absorb at most "
        f"{pool_rate:.1f} tokens/s against {supply_rate:.0f} supplied"
        + (
            ": the rest is lost for want of refreshable deals. Reading deeper deal pages on "
            "spare tokens (not built yet) would put it to use."
            if pool_rate < supply_rate
            else "; the rest of the loss is the lag between a heartbeat's figure and the step."
        )
    )
    return "\n\n".join([intro, table, goals, bounds])
