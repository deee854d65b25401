"""Benchmark 7: utilization and drain time in Keepa's proportions, for the bare permit
client and for the pipeline (``bench.proportions_pipeline``).

The refill step P is shortened and the simulator's latency with it (latency × P / 60 s), so
a call lasts the same fraction of a step as on Keepa (an offer call ~5 s against a 60-s
step). For each plan (tokens a step, Keepa's "tokens a minute") and N processes of the bare
permit client (``bench.fleet_worker``: the worker runtime's broker link and permit client,
peeking with ``offers=20`` in calls of 20 ASINs, Keepa's documented cap), a fixed backlog
whose cost is larger than the supply of ``steps`` refill steps is drained on a fresh
account that starts with one step's worth of tokens.

- utilization = tokens used ÷ (start balance + every refill step up to the last request);
- drain time ÷ limit: the steps from GO to the last answer, over the physical limit
  ⌈(what the backlog cost − start balance) ÷ rate⌉ steps — no fleet can finish sooner,
  since Keepa refuses a request at a balance ≤ 0;
- 429s, the lowest balance, ``/token`` calls per step, refill → first request (the
  simulator's own figure, each step that had a request), the permits' wait (ask → send).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from bench import backlog, keepa_step, proportions_pipeline
from bench import harness as h
from common import defaults

NAME = "proportions"
TITLE = "7. Utilization and drain time in Keepa's proportions"
SEED = 1
BATCH = 20  # keepa.max_asins_with_offers
TOKENS_PER_ASIN = 7.5  # offers=20 on the simulator's catalog (6 or 12 a product): sizing only
# The pipeline on the deal feed: a 1-token peek each, offers (6 or 12) for the ~30 % that
# survive it; sizing only (the limit uses what the simulator charged).
PIPELINE_TOKENS_PER_ASIN = 3.5
CLIENTS = ("bare permit client", "pipeline")
OVERSUPPLY = 1.25  # the backlog costs this many times the run's supply

GOAL_UTILIZATION = 0.99
GOAL_DRAIN = 1.02
GOAL_TOKEN_CALLS_PER_STEP = 1.0
GOAL_R2F_MS = 20.0


@dataclasses.dataclass(frozen=True)
class Cell:
    plan: int  # tokens a step
    refill_period_s: float
    processes: int


@dataclasses.dataclass(frozen=True)
class Params:
    cells: tuple[Cell, ...]
    steps: int


def _cells(plans: dict[int, float], processes: tuple[int, ...]) -> tuple[Cell, ...]:
    return tuple(Cell(plan, period, n) for plan, period in plans.items() for n in processes)


# The simulator is one Python process on a 2-core machine shared with the fleet: it serves a
# few hundred products a second, so the 4,000-a-minute plan needs a longer step (full only).
PROFILES = {
    "quick": Params(cells=_cells({20: 0.5, 250: 0.5}, (1, 4, 16)), steps=60),
    "full": Params(cells=_cells({20: 1.0, 250: 1.0, 4000: 8.0}, (1, 4, 16)), steps=60),
}


def run(profile: str, log_dir: Path) -> str:
    p = PROFILES[profile]
    results: list[tuple[Cell, str, dict[str, Any]]] = []
    most = max(math.ceil(OVERSUPPLY * p.steps * c.plan / PIPELINE_TOKENS_PER_ASIN) for c in p.cells)
    h.progress(f"{NAME}: the newest {most} deals of the feed, for the pipeline's backlog")
    feed = keepa_step.feed_asins(most, log_dir / "feed")
    for cell in p.cells:
        supply = p.steps * cell.plan
        size = math.ceil(OVERSUPPLY * supply / TOKENS_PER_ASIN)
        spec = backlog.RunSpec(
            side="fleet",
            processes=cell.processes,
            backlog=size,
            batch=BATCH,
            initial_tokens=cell.plan,
            refill_rate=cell.plan,
            refill_period_s=cell.refill_period_s,
            latency_scale=cell.refill_period_s / 60.0,
            time_limit_s=3 * p.steps * cell.refill_period_s + 30,
            seed=SEED,
        )
        h.progress(
            f"{NAME}: plan {cell.plan}/step of {cell.refill_period_s:g} s, N={cell.processes}, "
            f"backlog {size} ASINs"
        )
        r = backlog.run_backlog(spec, log_dir, f"plan{cell.plan}-n{cell.processes}")
        h.progress(
            f"{NAME}: plan {cell.plan}, N={cell.processes}: {r['items']}/{size} in "
            f"{r['elapsed_s']:.1f} s, utilization {r['utilization'] * 100:.1f} %, "
            f"429s {r['status_429']}"
        )
        results.append((cell, CLIENTS[0], r))
        size = math.ceil(OVERSUPPLY * supply / PIPELINE_TOKENS_PER_ASIN)
        r = proportions_pipeline.run_cell(
            plan=cell.plan,
            refill_period_s=cell.refill_period_s,
            processes=cell.processes,
            asins=feed[:size],
            time_limit_s=spec.time_limit_s,
            seed=SEED,
            log_dir=log_dir / f"pipeline-plan{cell.plan}-n{cell.processes}",
        )
        h.progress(
            f"{NAME}: pipeline, plan {cell.plan}, N={cell.processes}: {r['items']}/{size} "
            f"judged in {r['elapsed_s']:.1f} s, utilization {r['utilization'] * 100:.1f} %, "
            f"429s {r['status_429']}"
        )
        results.append((cell, CLIENTS[1], r))
    return _report(p, results)


def _drain(cell: Cell, r: dict[str, Any]) -> tuple[float | None, int | None]:
    """(drain time in steps, the limit in steps), None when the backlog was not finished."""
    if not r["finished"]:
        return None, None
    steps = r["wall_s"] / cell.refill_period_s
    limit = max(1, math.ceil((r["used"] - r["initial_tokens"]) / cell.plan))
    return steps, limit


def _report(p: Params, results: list[tuple[Cell, str, dict[str, Any]]]) -> str:
    rows, goals = [], []
    for cell, client, r in results:
        steps, limit = _drain(cell, r)
        run_steps = max(1.0, r["elapsed_s"] / cell.refill_period_s)
        token_per_step = r["token_calls"] / run_steps
        waits = _waits_ms(r)
        ratio = steps / limit if steps is not None and limit else None
        rows.append(
            [
                cell.plan,
                f"{cell.refill_period_s:g} s",
                cell.processes,
                client,
                f"{r['items']} / {r['backlog']}",
                f"{r['utilization'] * 100:.1f} %",
                f"{r['used']} / {r['supplied']}",
                f"{steps:.1f} / {limit}" if steps is not None else "not finished",
                f"{ratio:.3f}" if ratio is not None else "n/a",
                r["status_429"],
                r["min_tokens_left"],
                f"{token_per_step:.2f}",
                f"{r['r2f_median_ms']:.1f} / {r['r2f_p99_ms']:.1f}",
                f"{h.percentile(waits, 50):.0f} / {h.percentile(waits, 99):.0f}" if waits else "–",
                f"{r['mean_call_s'] * 1000:.0f} ms"
                if r["mean_call_s"] == r["mean_call_s"]
                else "–",
            ]
        )
        label = f"plan {cell.plan}, N={cell.processes}, {client}"
        goals += [
            [
                label,
                f"utilization ≥ {GOAL_UTILIZATION * 100:.0f} %",
                f"{r['utilization'] * 100:.1f} %",
                h.verdict(r["utilization"] >= GOAL_UTILIZATION),
            ],
            [
                label,
                f"drain time ≤ {GOAL_DRAIN} × the limit",
                f"{ratio:.3f} ×" if ratio is not None else "not finished",
                h.verdict(ratio is not None and ratio <= GOAL_DRAIN),
            ],
            [label, "0 × 429", r["status_429"], h.verdict(r["status_429"] == 0)],
            [
                label,
                "≤ 1 /token call per step",
                f"{token_per_step:.2f}",
                h.verdict(token_per_step <= GOAL_TOKEN_CALLS_PER_STEP),
            ],
            [
                label,
                f"refill → first request median ≤ {GOAL_R2F_MS:g} ms",
                f"{r['r2f_median_ms']:.1f} ms",
                h.verdict(r["r2f_median_ms"] <= GOAL_R2F_MS),
            ],
        ]
    intro = (
        f"Each cell, twice: a simulator of its own (seed {SEED}), a fresh account starting "
        f"with one step's tokens, a broker, and N processes: the *bare permit client* "
        f"(`bench.fleet_worker`) peeking a backlog of catalog ASINs {BATCH} a call with "
        "`offers=20`, then the *pipeline* (`keepa-fleet worker --role ingest`: the stats "
        "peek, offers for the survivors' commit) on the newest deals of the feed; each "
        f"backlog is sized to cost about {OVERSUPPLY} × the supply of {p.steps} steps. "
        "Latency × P / 60 s: a call lasts the fraction of a step it lasts on Keepa. The limit "
        "is ⌈(tokens the backlog cost − start balance) ÷ rate⌉ steps. The pipeline's permit "
        "waits and call times are not collected (–)."
    )
    table = h.table(
        [
            "plan (tokens/step)",
            "step P",
            "N",
            "client",
            "ASINs done",
            "utilization",
            "tokens used / supplied",
            "drain steps / limit",
            "drain ÷ limit",
            "429s",
            "lowest balance",
            "/token calls per step",
            "refill → first request median / p99 ms",
            "permit wait p50 / p99 ms",
            "mean call",
        ],
        rows,
    )
    verdicts = h.table(["cell", "goal", "measured", "verdict"], goals)
    return "\n\n".join([intro, table, verdicts, _bounds(results)])


def _waits_ms(r: dict[str, Any]) -> list[float]:
    return [float(w) for w in r.get("permit_waits_ms", [])]


def _bounds(results: list[tuple[Cell, str, dict[str, Any]]]) -> str:
    """What bounds a missed figure, from the run's own data."""
    lines = ["What bounds the figures (from this run's data):", ""]
    for cell, client, r in results:
        if r["utilization"] >= GOAL_UTILIZATION and r["finished"]:
            continue
        demand = cell.processes * BATCH * TOKENS_PER_ASIN / max(r["mean_call_s"], 1e-9)
        supply = cell.plan / cell.refill_period_s
        unused = r["supplied"] - r["used"]
        if client == CLIENTS[1]:
            why = (
                f"{unused} of {r['supplied']} tokens unused while the backlog remained "
                f"(balance at the end {r['tokens_left_end']}; {r['items']} of {r['backlog']} "
                "judged)"
            )
            if unused <= defaults.RESUME_AT + cell.plan:
                why += (
                    f": the recharge hysteresis — a grant that leaves less than "
                    f"`broker.soft_floor` ({defaults.SOFT_FLOOR}) makes the next wait for "
                    f"`broker.resume_at` ({defaults.RESUME_AT}), "
                    f"{defaults.RESUME_AT / cell.plan:g} steps of this plan, and the "
                    "backlog's last requests wait for it (a setting; lower it for a small plan)"
                )
        elif demand < supply:
            why = (
                f"latency-bound: {cell.processes} process(es), one call of {BATCH} ASINs in "
                f"flight each ({r['mean_call_s'] * 1000:.0f} ms a call) ask for about "
                f"{demand:.0f} tokens/s against {supply:.0f} supplied"
            )
        else:
            why = (
                f"{r['supplied'] - r['used']} of {r['supplied']} tokens unused while the "
                f"backlog remained (balance at the end {r['tokens_left_end']}): held back by "
                "the ledger while permits were in flight, and the end of the run"
            )
        lines.append(f"- plan {cell.plan}, N={cell.processes}, {client}: {why}.")
    return "\n".join(lines) if len(lines) > 2 else "Every cell met its utilization goal."
