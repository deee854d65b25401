"""Benchmark 1, a smoke test: token utilization, fleet vs peer, on one simulated account.

This is the first release's short profile, kept as a smoke test: an offer call of ~5 s
against a 1-s refill step lasts five steps, where on Keepa it lasts a twelfth of one, and a
run stops after 50 s, so its figures are mostly the start-up transient, not what a user's
fleet gets. Benchmark 7 (``bench.proportions``) measures utilization and drain time in
Keepa's proportions; benchmark 8 (``bench.keepa_step``) the peer at Keepa's own step.

The simulator runs a short refill step and Keepa-like latency (seconds per offer call). A
fixed backlog of catalog ASINs is peeked with ``offers=20`` by N processes on each side
(``bench.backlog``): the fleet (broker + N workers on the real permit client) and the peer
(N processes of the unmodified ``keepa`` package). Figures from the simulator's ground truth.

Utilization = tokens used ÷ tokens the account could supply while backlog remained: the
balance at GO plus every refill step up to the last request sent (after it nothing was left
to ask for). A run cut off at the time limit counts its whole duration.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bench import backlog
from bench import harness as h
from common.config import BrokerSettings

NAME = "utilization"
TITLE = "1. Smoke test: token utilization, fleet vs peer, on a 1-s step (not Keepa's proportions)"

GOAL_UTILIZATION = 0.99
GOAL_R2F_MEDIAN_MS = 20.0
MAX_DEFICIT = BrokerSettings().max_deficit  # the broker's default
# The keepa package's 429 wait assumes Keepa's 60 s refill step (see the notes it prints).
KEEPA_STEP_S = 60.0
SEED = 1  # repeat r runs on seed SEED + r: both sides meet the same latencies


@dataclasses.dataclass(frozen=True)
class Params:
    processes: tuple[int, ...]
    backlog: int
    batch: int
    refill_rate: int
    refill_period_s: float
    latency_scale: float
    initial_tokens: int
    time_limit_s: float
    repeats: int


QUICK = Params(
    processes=(1, 4, 16),
    backlog=40,
    batch=8,
    refill_rate=20,
    refill_period_s=1.0,
    latency_scale=1.0,
    initial_tokens=40,
    time_limit_s=50.0,
    repeats=1,
)
PROFILES = {
    "quick": QUICK,
    "full": dataclasses.replace(QUICK, backlog=192, time_limit_s=240.0, repeats=3),
}


def run(profile: str, log_dir: Path) -> str:
    p = PROFILES[profile]
    runs: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in range(p.repeats):
        for n in p.processes:
            for side in ("fleet", "peer"):
                h.progress(f"{NAME}: {side}, N={n}, repeat {r + 1}/{p.repeats}")
                spec = backlog.RunSpec(
                    side=side,
                    processes=n,
                    backlog=p.backlog,
                    batch=p.batch,
                    initial_tokens=p.initial_tokens,
                    refill_rate=p.refill_rate,
                    refill_period_s=p.refill_period_s,
                    latency_scale=p.latency_scale,
                    time_limit_s=p.time_limit_s,
                    seed=SEED + r,
                )
                result = backlog.run_backlog(spec, log_dir, f"{side}-n{n}-r{r}")
                h.progress(
                    f"{NAME}: {side}, N={n}: {result['items']}/{result['backlog']} ASINs "
                    f"in {result['elapsed_s']:.1f} s, utilization "
                    f"{result['utilization'] * 100:.1f} %, 429s {result['status_429']}, "
                    f"lowest balance {result['min_tokens_left']}"
                )
                runs.setdefault((n, side), []).append(result)
    return _report(p, runs)


def _pct(f: h.Figure) -> str:
    return dataclasses.replace(f, values=[v * 100 for v in f.values]).fmt(".1f", " %")


def _wall(rs: list[dict[str, Any]], p: Params) -> str:
    done = sum(1 for r in rs if r["finished"])
    if done == len(rs):
        return h.figures(rs, "wall_s").fmt(".1f", " s")
    return f"not finished in {p.time_limit_s:.0f} s ({done}/{len(rs)} runs finished)"


def _report(p: Params, runs: dict[tuple[int, str], list[dict[str, Any]]]) -> str:
    rows = []
    for n in p.processes:
        for side in ("fleet", "peer"):
            rs = runs.get((n, side), [])
            if not rs:
                continue
            rows.append(
                [
                    n,
                    side,
                    h.figures(rs, "items").fmt(".0f") + f" / {p.backlog}",
                    _wall(rs, p),
                    _pct(h.figures(rs, "utilization")),
                    h.figures(rs, "used").fmt(".0f") + " / " + h.figures(rs, "supplied").fmt(".0f"),
                    h.figures(rs, "status_429").fmt(".0f"),
                    h.figures(rs, "min_tokens_left").fmt(".0f"),
                    h.figures(rs, "token_calls").fmt(".0f"),
                    h.figures(rs, "r2f_median_ms").fmt(".1f")
                    + " / "
                    + h.figures(rs, "r2f_p99_ms").fmt(".1f"),
                    h.figures(rs, "r2f_released_median_ms").fmt(".1f")
                    + " / "
                    + h.figures(rs, "r2f_released_p99_ms").fmt(".1f")
                    + " (n="
                    + h.figures(rs, "r2f_released_count").fmt(".0f")
                    + ")",
                    f"{h.figures(rs, 'peer_waits').fmt('.0f')} "
                    f"({h.figures(rs, 'peer_wait_max_s').fmt('.0f')} s)"
                    if side == "peer"
                    else "–",
                ]
            )
    main = h.table(
        [
            "N",
            "side",
            "ASINs done",
            "wall time to finish the backlog",
            "utilization",
            "tokens used / supplied",
            "429s",
            "lowest balance",
            "/token calls",
            "refill → first request, every step: median / p99 ms",
            "requests that waited over a refill: step → send, median / p99 ms",
            "429 sleeps (longest)",
        ],
        rows,
    )
    goal_rows = []
    for n in p.processes:
        fleet, peer = runs.get((n, "fleet"), []), runs.get((n, "peer"), [])
        if not fleet:
            continue

        def pair(key: str, fleet: list[dict[str, Any]] = fleet, peer: list[dict[str, Any]] = peer):
            return h.figures(fleet, key), h.figures(peer, key)

        fu, pu = pair("utilization")
        f429, p429 = pair("status_429")
        fmin, pmin = pair("min_tokens_left")
        fr2f, pr2f = pair("r2f_median_ms")
        fr2w, pr2w = pair("r2f_released_median_ms")
        goal_rows += [
            [
                n,
                f"utilization ≥ {GOAL_UTILIZATION * 100:.0f} % while backlog remained",
                _pct(fu),
                _pct(pu),
                _ratio(fu, pu),
                h.verdict(fu.median >= GOAL_UTILIZATION),
            ],
            [
                n,
                "0 429s caused by the fleet",
                f429.fmt(".0f"),
                p429.fmt(".0f"),
                "",
                _v(f429.high == 0),
            ],
            [
                n,
                f"balance never below -max_deficit ({-MAX_DEFICIT})",
                fmin.fmt(".0f"),
                pmin.fmt(".0f"),
                "",
                _v(fmin.low >= -MAX_DEFICIT),
            ],
            [
                n,
                f"refill → first request median ≤ {GOAL_R2F_MEDIAN_MS:.0f} ms (every step)",
                fr2f.fmt(".1f", " ms"),
                pr2f.fmt(".1f", " ms"),
                "",
                _v(fr2f.median <= GOAL_R2F_MEDIAN_MS, fr2f),
            ],
            [
                n,
                f"… (requests that waited over a refill step) ≤ {GOAL_R2F_MEDIAN_MS:.0f} ms",
                fr2w.fmt(".1f", " ms"),
                pr2w.fmt(".1f", " ms"),
                "",
                _v(fr2w.median <= GOAL_R2F_MEDIAN_MS, fr2w),
            ],
        ]
    goals = h.table(["N", "goal", "fleet", "peer", "fleet ÷ peer", "verdict (fleet)"], goal_rows)
    setup = (
        f"One simulated account: {p.refill_rate} tokens per {p.refill_period_s:g} s refill step "
        f"(cap {60 * p.refill_rate}), Keepa-like latency × {p.latency_scale:g} (an offer call "
        f"takes 2–20 s, about 5 s), starting balance {p.initial_tokens}. Backlog: the first "
        f"{p.backlog} catalog ASINs, split evenly over N processes, peeked {p.batch} a call with "
        "`offers=20`, `stats=90`, no price history, on both sides. Time limit "
        f"{p.time_limit_s:.0f} s a run; {p.repeats} repeat(s) per cell (a cell's figure is the "
        "median, its spread in parentheses). Each run has a simulator of its own, same seed: "
        "the same catalog, and the n-th `/product` call of either side gets the same latency; "
        "a fresh account, so every count is that run's own. Figures come from the "
        "simulator's `/_sim/state`, except the send times, "
        "which the processes report. *Utilization* = tokens used ÷ (balance at the start + "
        "every refill step up to the last request sent; above 100 % when the account was "
        "overdrawn then); a run cut off at the time limit counts up to the limit. "
        "*Refill → first request, every step* is the simulator's own figure "
        "(each step at which a charged request came: the delay from the step to the first one); "
        "it also measures when work happened to be ready. The second keeps only the requests "
        "that were already waiting for tokens when a step came (fleet: asked the broker, not "
        "yet granted; peer: asleep in its 429 wait) and gives the delay from the latest step "
        "to their send: the reaction to the refill itself."
    )
    return "\n\n".join([setup, main, goals, _notes(p, runs)])


def _v(met: bool, fig: h.Figure | None = None) -> str:
    if fig is not None and fig.median != fig.median:
        return h.verdict(None)
    return h.verdict(met)


def _ratio(a: h.Figure, b: h.Figure) -> str:
    if b.median and b.median == b.median and a.median == a.median:
        return f"{a.median / b.median:.2f} ×"
    return "n/a"


def _notes(p: Params, runs: dict[tuple[int, str], list[dict[str, Any]]]) -> str:
    lines = ["What bounds the figures (from this run's data):", ""]
    peer_waits = [r for n in p.processes for r in runs.get((n, "peer"), [])]
    longest = max((r["peer_wait_max_s"] for r in peer_waits), default=0.0)
    lines.append(
        "- **The peer** is `keepa` 1.6.0 unmodified (`bench/peer.py`; `redirect_keepa_http` is "
        "the one change: its `requests.get` goes to the simulator). It sends without looking at "
        "the balance, so concurrent processes drive it below zero; on a 429 it sleeps "
        "`time_to_refill` = time to the next refill + 1 s + |tokensLeft| ÷ refillRate × "
        f"{KEEPA_STEP_S:.0f} s, a formula for Keepa's {KEEPA_STEP_S:.0f} s step: on this "
        f"{p.refill_period_s:g} s step each wait after a negative balance is "
        f"{KEEPA_STEP_S / p.refill_period_s:.0f}× longer than the refills need (longest sleep "
        f"here {longest:.0f} s). So its wall time and utilization are worse here than they "
        "would be on Keepa. Its 429s and its lowest balance come from sending without looking "
        "at the balance; shorter sleeps would only make it retry, and meet 429s, sooner. A "
        "peer run whose unfinished processes are all asleep past the time "
        "limit is stopped there and counted as cut off at the limit."
    )
    for n in p.processes:
        rs = runs.get((n, "fleet"), [])
        if not rs:
            continue
        r = rs[0]
        causes = _fleet_causes(r, p)
        if causes:
            lines.append(f"- **Fleet, N={n}** (first repeat): " + " ".join(causes))
    return "\n".join(lines)


def _fleet_causes(r: dict[str, Any], p: Params) -> list[str]:
    out = []
    supply_per_s = p.refill_rate / p.refill_period_s
    per_item = r.get("tokens_per_item") or float("nan")
    one_worker_per_s = p.batch * per_item / r["mean_call_s"] if r.get("mean_call_s") else 0.0
    if r["utilization"] < GOAL_UTILIZATION:
        idle = r["supplied"] - r["used"]
        text = (
            f"utilization {r['utilization'] * 100:.1f} %: {idle} of {r['supplied']} tokens "
            "unused while backlog remained."
        )
        if r["processes"] * one_worker_per_s < supply_per_s:
            text += (
                f" Demand-bound: {r['processes']} process(es) with one call in flight each draw "
                f"about {r['processes'] * one_worker_per_s:.1f} tokens/s ({p.batch} ASINs × "
                f"{per_item:.1f} tokens per {r['mean_call_s']:.1f} s call) against "
                f"{supply_per_s:.0f} tokens/s supplied."
            )
        else:
            text += (
                " The unused tokens are the balance when the last request went out; the broker "
                "held them back because a permit in flight stays counted as not included in any "
                "newer observation until it settles (the ledger's safe side): the simulator, "
                "like Keepa, charges a call when it arrives, so a settle's envelope already "
                "shows the other calls in flight, and with calls taking seconds the broker "
                "counts those twice meanwhile. Also: the recharge rule (a grant that leaves "
                "less than `soft_floor` 20 stops grants until `resume_at` 60), permits "
                "sized above a call's real cost, and the tail of the run, when fewer processes "
                "still have backlog than the supply could feed."
            )
        out.append(text)
    if r["utilization"] > 1.0:
        out.append(
            f"Utilization above 100 %: {r['used']} tokens used against {r['supplied']} "
            "supplied up to the last request, i.e. the account was overdrawn when it went out."
        )
    if r["status_429"] or r["min_tokens_left"] < -MAX_DEFICIT:
        out.append(
            f"Balance down to {r['min_tokens_left']}, {r['status_429']} 429(s): "
            f"{r['overruns']} of {r['calls']} calls cost more than their permit "
            f"({r['overrun_tokens']} tokens over in all). Permits are sized by the fleet's cost "
            "model (`common/costs.py`): `worker.cost_per_product` (default 5) per ASIN until "
            "the first answer, then the largest of the last 8 per-product costs seen; an "
            "`offers=20` product costs 6–12 tokens, so the first permits (and a batch dearer "
            "than the recent ones) overdraw the account before the broker hears the real cost."
        )
    if r["r2f_median_ms"] > GOAL_R2F_MEDIAN_MS:
        text = (
            f"Refill → first request (every step) {r['r2f_median_ms']:.0f} ms: with "
            f"{r['processes']} process(es) no request is usually waiting when a step comes "
            "(each is in its call), so the first request after a step comes whenever a call "
            "ends."
        )
        if r["r2f_released_count"]:
            text += (
                f" The {r['r2f_released_count']} request(s) that did wait over a step went out "
                f"{r['r2f_released_median_ms']:.1f} ms (median) after it."
            )
        out.append(text)
    if r["waited_no_step"]:
        out.append(
            f"{r['waited_no_step']} of {r['waited']} waiting requests were granted with no "
            "refill step during their wait: released when another call settled (the in-flight "
            "cost counted twice, see above)."
        )
    return out
