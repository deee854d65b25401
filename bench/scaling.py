"""Benchmark 3: scaling with workers. ASINs peeked per second by the fleet with 1, 2, 4, 8
and 16 workers when each Keepa call takes seconds.

Each run gives the fleet (broker + N ``bench.fleet_worker`` processes) more backlog than it
can finish and counts the ASINs completed in a steady window after a warm-up (the account
starts nearly empty, so the starting balance does not inflate the rate). Beside each rate:
the token budget in ASINs per second (refill rate ÷ tokens per ASIN, measured in the same
run) and the latency bound (N × batch ÷ mean call time). The rate should follow the smaller
of the two: rise with N until the budget binds, then stay at the budget.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bench import backlog
from bench import harness as h

NAME = "scaling"
TITLE = "3. Scaling with workers"
SEED = 1


@dataclasses.dataclass(frozen=True)
class Params:
    workers: tuple[int, ...]
    backlog: int
    batch: int
    refill_rate: int
    refill_period_s: float
    latency_scale: float
    initial_tokens: int
    warmup_s: float
    window_s: float
    repeats: int


QUICK = Params(
    workers=(1, 2, 4, 8, 16),
    backlog=400,
    batch=6,
    refill_rate=40,
    refill_period_s=1.0,
    latency_scale=1.0,
    initial_tokens=0,
    warmup_s=8.0,
    window_s=20.0,
    repeats=1,
)
PROFILES = {
    "quick": QUICK,
    "full": dataclasses.replace(QUICK, backlog=1500, warmup_s=10.0, window_s=90.0, repeats=3),
}


def run(profile: str, log_dir: Path) -> str:
    p = PROFILES[profile]
    runs: dict[int, list[dict[str, Any]]] = {}
    for r in range(p.repeats):
        for n in p.workers:
            h.progress(f"{NAME}: {n} worker(s), repeat {r + 1}/{p.repeats}")
            spec = backlog.RunSpec(
                side="fleet",
                processes=n,
                backlog=p.backlog,
                batch=p.batch,
                initial_tokens=p.initial_tokens,
                refill_rate=p.refill_rate,
                refill_period_s=p.refill_period_s,
                latency_scale=p.latency_scale,
                time_limit_s=p.warmup_s + p.window_s,
                seed=SEED + r,
            )
            result = backlog.run_backlog(spec, log_dir, f"scale-n{n}-r{r}")
            result.update(_window(result, p))
            h.progress(
                f"{NAME}: {n} worker(s): {result['window_rate']:.2f} ASINs/s "
                f"(budget {result['budget_rate']:.2f}, latency bound "
                f"{result['latency_rate']:.2f})"
            )
            runs.setdefault(n, []).append(result)
    return _report(p, runs)


def _window(result: dict[str, Any], p: Params) -> dict[str, Any]:
    t0, t1 = p.warmup_s, p.warmup_s + p.window_s
    done = sum(items for at, items in result["events"] if t0 <= at < t1)
    rate = done / p.window_s
    per_item = result["tokens_per_item"]
    budget = (p.refill_rate / p.refill_period_s) / per_item if per_item == per_item else 0.0
    call_s = result.get("mean_call_s") or float("nan")
    latency = result["processes"] * p.batch / call_s if call_s == call_s else float("nan")
    return {
        "window_rate": rate,
        "budget_rate": budget,
        "latency_rate": latency,
        "of_bound": rate / min(budget, latency) if min(budget, latency) > 0 else float("nan"),
    }


def _report(p: Params, runs: dict[int, list[dict[str, Any]]]) -> str:
    rows = []
    for n in p.workers:
        rs = runs.get(n, [])
        if not rs:
            continue
        rows.append(
            [
                n,
                h.figures(rs, "window_rate").fmt(".2f"),
                h.figures(rs, "budget_rate").fmt(".2f"),
                h.figures(rs, "latency_rate").fmt(".2f"),
                h.Figure([r["of_bound"] * 100 for r in rs]).fmt(".0f", " %"),
                h.figures(rs, "mean_call_s").fmt(".1f"),
                h.figures(rs, "tokens_per_item").fmt(".1f"),
                h.figures(rs, "status_429").fmt(".0f"),
                h.figures(rs, "min_tokens_left").fmt(".0f"),
                h.figures(rs, "tokens_left_end").fmt(".0f"),
            ]
        )
    main = h.table(
        [
            "workers",
            "ASINs/s",
            "token budget, ASINs/s",
            "latency bound, ASINs/s",
            "rate ÷ min(budget, latency bound)",
            "mean call s",
            "tokens per ASIN",
            "429s",
            "lowest balance",
            "balance at the end",
        ],
        rows,
    )
    base = runs.get(p.workers[0], [])
    ratio_rows = []
    for n in p.workers:
        rs = runs.get(n, [])
        if rs and base:
            ratio = rs[0]["window_rate"] / base[0]["window_rate"] if base[0]["window_rate"] else 0
            ratio_rows.append(f"{n}: {ratio:.2f}×")
    setup = (
        f"One simulated account: {p.refill_rate} tokens per {p.refill_period_s:g} s step, "
        f"Keepa-like latency × {p.latency_scale:g}, starting balance {p.initial_tokens}. N "
        f"worker processes peek a backlog of {p.backlog} ASINs {p.batch} a call (`offers=20`) "
        f"under permits; ASINs completed between {p.warmup_s:.0f} s and "
        f"{p.warmup_s + p.window_s:.0f} s after the start are counted. {p.repeats} repeat(s). "
        "Token budget = refill rate ÷ tokens per ASIN; latency bound = N × batch ÷ mean call "
        "time (one call in flight per worker). Each run has a simulator of its own (same seed: "
        "the n-th `/product` call of every run gets the same latency) and a fresh account."
    )
    scale = "Rate relative to 1 worker (first repeat): " + ", ".join(ratio_rows) + "."
    return "\n\n".join([setup, main, scale, _notes(p, runs)])


def _notes(p: Params, runs: dict[int, list[dict[str, Any]]]) -> str:
    lines = ["What bounds the figures (first repeat):", ""]
    for n in p.workers:
        rs = runs.get(n, [])
        if not rs:
            continue
        r = rs[0]
        if r["latency_rate"] <= r["budget_rate"]:
            text = (
                f"- {n} worker(s): latency-bound (one call in flight per worker, "
                f"{r['mean_call_s']:.1f} s a call); {r['of_bound'] * 100:.0f} % of that bound."
            )
        else:
            text = (
                f"- {n} worker(s): budget-bound; "
                f"{r['window_rate'] / r['budget_rate'] * 100:.0f} % of the budget."
            )
        if r["latency_rate"] > r["budget_rate"] and r["window_rate"] < 0.95 * r["budget_rate"]:
            text += (
                f" The account still held {r['tokens_left_end']} tokens at the end: tokens the "
                "broker counted as in flight. A permit in flight stays counted as not included "
                "in any newer observation until it settles (the ledger's safe side), and the "
                "simulator, like Keepa, charges a call when it arrives, so while calls take "
                "seconds the broker counts about (refill rate × call time) tokens twice."
            )
        if r["status_429"] or r["min_tokens_left"] < 0:
            text += (
                f" Lowest balance {r['min_tokens_left']}, {r['status_429']} 429(s): "
                f"{r['overruns']} of {r['calls']} calls cost more than their permit (the cost "
                "model starts at `worker.cost_per_product` = 5 tokens per ASIN; an offers=20 "
                "product costs 6–12)."
            )
        lines.append(text)
    return "\n".join(lines)
