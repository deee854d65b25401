"""One run of a fixed ASIN backlog on one simulated account, by the fleet or by the peer.

The fleet: a ``keepa-fleet broker`` process and N ``bench.fleet_worker`` processes (the
real worker runtime's permit client around ``common.keepa.KeepaClient``). The peer: N
``bench.peer`` processes (the unmodified ``keepa`` package). Both get the same ASINs, split
into N shares, the same batch size and the same request (``offers=20``, ``stats=90``, no
price history). Every figure comes from the simulator's ground truth (``/_sim/state`` of a
fresh account per run) except the send times, which the processes report.

Order of a run: start the N processes and wait until each has imported everything and is
READY; create the account with the starting balance (``/_sim/tokens``); (fleet) start the
broker, which syncs ``/token`` at start; snapshot the account; GO. The run ends when every
process has finished its share, or at ``time_limit_s`` (then the processes still running
are stopped and the backlog counts as not finished).
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import time
import uuid
from pathlib import Path
from typing import Any

from bench import harness as h

STATS_DAYS = 90
TRIGGER_S = 0.02  # "right after" a refill step or an answer
OFFERS = 20


@dataclasses.dataclass(frozen=True)
class RunSpec:
    side: str  # "fleet" or "peer"
    processes: int
    backlog: int  # the first this many catalog ASINs
    batch: int
    initial_tokens: int
    refill_rate: int
    refill_period_s: float
    latency_scale: float
    time_limit_s: float
    seed: int = 1
    broker_env: dict[str, str] = dataclasses.field(default_factory=dict)
    asins: tuple[str, ...] = ()  # the backlog itself; default: the first `backlog` of the catalog
    peer_args: tuple[str, ...] = ()  # extra arguments of every bench.peer process


def shares(asins: list[str], n: int) -> list[list[str]]:
    """Contiguous, near-equal shares (every ASIN in exactly one)."""
    base, extra = divmod(len(asins), n)
    out, i = [], 0
    for k in range(n):
        size = base + (1 if k < extra else 0)
        out.append(asins[i : i + size])
        i += size
    return out


def run_backlog(spec: RunSpec, log_dir: Path, label: str) -> dict[str, Any]:
    """One run on a simulator of its own (same seed every run: the same catalog, and the
    n-th /product call of every run gets the same latency), on a fresh account."""
    key = f"bench{spec.side}{uuid.uuid4().hex[:16]}"
    run_dir = log_dir / label
    run_dir.mkdir(parents=True, exist_ok=True)
    address = f"tcp://127.0.0.1:{h.free_port()}"
    progress: list[dict[str, Any]] = [{} for _ in range(spec.processes)]
    events: list[tuple[float, int]] = []  # (seconds after GO, ASINs done) as reported
    with h.owned_processes(run_dir) as procs:
        sim = h.start_sim(
            procs,
            refill_rate=spec.refill_rate,
            refill_period_s=spec.refill_period_s,
            latency_scale=spec.latency_scale,
            seed=spec.seed,
        )
        asins = list(spec.asins) if spec.asins else sim.catalog(spec.backlog)
        env = h.broker_env(address, sim.url, key, spec.refill_period_s)
        children = []
        for i, share in enumerate(shares(asins, spec.processes)):
            same = ["--batch", str(spec.batch), "--offers", str(OFFERS), "--asins", ",".join(share)]
            if spec.side == "fleet":
                wid = f"{label}-w{i:02d}"
                argv = h.python_command(
                    "bench.fleet_worker", "--id", wid, "--stats", str(STATS_DAYS), *same
                )
            else:
                argv = h.python_command(
                    "bench.peer", "--sim", sim.url, "--key", key, *same, *spec.peer_args
                )
            children.append(procs.start(f"{spec.side}{i:02d}", argv, env=env, pipes=True))
        h.wait_ready(children, timeout_s=180)
        sim.admin("tokens", key=key, tokens=spec.initial_tokens)
        broker = None
        if spec.side == "fleet":
            broker = h.start_broker(procs, env, extra=spec.broker_env)
        s0 = sim.state(key)
        t_go = time.time()
        for c in children:
            c.send("GO")

        def on_line(i: int, line: str) -> None:
            if line.startswith("PROGRESS"):
                report = json.loads(line[len("PROGRESS") :])
                delta = int(report.get("items", 0)) - int(progress[i].get("items", 0))
                progress[i] = report
                if delta:
                    events.append((time.time() - t_go, delta))

        limit_at = t_go + spec.time_limit_s

        def asleep_past_limit(results: list[dict[str, Any] | None]) -> bool:
            """Every unfinished peer process sleeps in the package's 429 wait until after
            the time limit: nothing can happen before it, so the run is over."""
            pending = [i for i, r in enumerate(results) if r is None]
            return bool(pending) and all(
                (progress[i].get("sleeping_until") or 0) > limit_at for i in pending
            )

        deadline = time.monotonic() + spec.time_limit_s
        results = h.gather(children, deadline, on_line, until=asleep_past_limit)
        t_end = time.time()
        if any(r is None for r in results):
            t_end = limit_at  # cut off at the limit (or certain to be, see asleep_past_limit)
        s1 = sim.state(key)
        broker_state = h.broker_status(address) if broker is not None else None
    out = summarize(spec, s0, s1, t_go, t_end, results, progress, broker_state)
    out["events"] = events
    return out


def summarize(
    spec: RunSpec,
    s0: dict[str, Any],
    s1: dict[str, Any],
    t_go: float,
    t_end: float,
    results: list[dict[str, Any] | None],
    progress: list[dict[str, Any]],
    broker_state: dict[str, Any] | None,
) -> dict[str, Any]:
    finished = all(r is not None for r in results)
    reports = [r if r is not None else p for r, p in zip(results, progress, strict=True)]
    items = sum(int(r.get("items", 0)) for r in reports)
    if finished:
        last_send = max(float(r.get("last_send") or t_go) for r in reports)
        done_at = max(float(r.get("finished") or t_end) for r in reports)
    else:
        # The backlog remained until the cut-off.
        last_send = done_at = t_end
    period = spec.refill_period_s
    phase = float(s0["created_at"]) if s0.get("created_at") else _refill_phase(reports)
    if phase is not None and s0.get("refill_steps") is not None:
        # Exact: the steps after the snapshot s0 (whose balance is the initial one) up to
        # the last send; the simulator's steps fall at created_at + k x period.
        refills = max(0, math.floor((last_send - phase) / period) - int(s0["refill_steps"]))
    else:
        refills = _refills_between(t_go, last_send, period, phase)
    rate = int(s1.get("refill_rate") or s0.get("refill_rate") or 0)
    initial = int(s0["tokens_left"])
    supplied = initial + rate * refills
    used = int(s1["tokens_consumed"]) - int(s0["tokens_consumed"])
    used -= int(s1.get("external_consumed", 0)) - int(s0.get("external_consumed", 0))
    waits = [w for r in reports for w in r.get("waits_s", [])]
    r2f = refill_to_first(s1)
    released, waited, no_step = _released_delays_ms(reports, phase, period)
    r2f_rel = _stats(released)
    out: dict[str, Any] = {
        "finished": finished,
        "processes": spec.processes,
        "items": items,
        "backlog": spec.backlog,
        "wall_s": (done_at - t_go) if finished else float("nan"),
        "elapsed_s": t_end - t_go,
        "last_send_s": last_send - t_go,
        "initial_tokens": initial,
        "refills": refills,
        "supplied": supplied,
        "used": used,
        "utilization": used / supplied if supplied > 0 else float("nan"),
        "status_429": int(s1.get("status_429", 0)) - int(s0.get("status_429", 0)),
        "min_tokens_left": int(s1.get("min_tokens_left", s1["tokens_left"])),
        "token_calls": int(s1.get("token_calls", 0)),
        "product_calls": int(s1.get("product_calls", 0)) - int(s0.get("product_calls", 0)),
        "r2f_median_ms": r2f[0],
        "r2f_p99_ms": r2f[1],
        "r2f_count": r2f[2],
        "r2f_released_median_ms": r2f_rel[0],
        "r2f_released_p99_ms": r2f_rel[1],
        "r2f_released_count": r2f_rel[2],
        "waited": waited,
        "waited_no_step": no_step,
        "peer_waits": len(waits),
        "peer_wait_max_s": max(waits) if waits else 0.0,
        "peer_wait_sum_s": sum(waits),
        "errors": sum(int(r.get("errors", 0)) for r in reports),
        "mean_call_s": _mean_call_s(reports),
        "overruns": sum(int(r.get("overruns", 0)) for r in reports),
        "overrun_tokens": sum(int(r.get("overrun_tokens", 0)) for r in reports),
        "calls": sum(int(r.get("calls", 0)) for r in reports),
        "tokens_left_end": int(s1["tokens_left"]),
        "tokens_per_item": _tokens_per_item(spec.side, reports, used, items),
        "deals": sum(int(r.get("deals", 0)) for r in reports),
        # Fleet: every permit's wait, ask -> send (the peer's intervals are 429 sleeps).
        "permit_waits_ms": [
            (b - a) * 1000.0 for r in reports if "sends" not in r for a, b in r.get("intervals", [])
        ],
        "items_per_s": items / ((done_at if finished else t_end) - t_go),
    }
    if broker_state is not None:
        out["broker"] = _broker_summary(broker_state)
    return out


def _tokens_per_item(side: str, reports: list[dict[str, Any]], used: int, items: int) -> float:
    """Tokens per ASIN of the completed calls (fleet processes report what each call cost;
    the peer's do not, and then the account's total is used)."""
    if not items:
        return float("nan")
    if side == "fleet":
        return sum(int(r.get("tokens", 0)) for r in reports) / items
    return used / items


def _mean_call_s(reports: list[dict[str, Any]]) -> float:
    calls = sum(int(r.get("calls", 0)) for r in reports)
    total = sum(float(r.get("call_s_sum", 0.0)) for r in reports)
    return total / calls if calls else float("nan")


def _released_delays_ms(
    reports: list[dict[str, Any]], phase: float | None, period: float
) -> tuple[list[float], int, int]:
    """The reaction to a refill: for each request that had to wait for tokens and was sent
    after at least one refill step during its wait, the delay from the latest step to the
    send, in ms. The fleet's wait: from asking the broker to the send (longer than
    ``TRIGGER_S``); the peer's: a sleep in its 429 wait, until its next /product request.
    Also returns how many requests waited, and how many of those (fleet) were granted
    without a refill step during their wait (released by another permit's settle)."""
    if phase is None:
        return [], 0, 0
    out: list[float] = []
    waited = no_step = 0
    for r in reports:
        own_sends = sorted(float(t) for t in r.get("sends", []))
        for a, b in r.get("intervals", []):
            if "sends" in r:  # the peer: a 429 sleep [a, b]; its next request is the send
                i = bisect.bisect_left(own_sends, b)
                if i >= len(own_sends):
                    continue
                b = own_sends[i]
            elif b - a <= TRIGGER_S:
                continue  # granted at once: it did not wait
            waited += 1
            since_step = (b - phase) % period
            if b - since_step <= a:
                no_step += 1  # no refill step during the wait
                continue
            out.append(since_step * 1000.0)
    return out, waited, no_step


def _refill_phase(reports: list[dict[str, Any]]) -> float | None:
    """An epoch instant of a refill step, from an envelope a process saw (or None)."""
    for r in reports:
        at = r.get("next_refill_at")
        if at:
            return float(at)
    return None


def _refills_between(t0: float, t1: float, period: float, phase: float | None) -> int:
    """Refill steps in (t0, t1]: exact with a known phase, else the nominal count."""
    if t1 <= t0:
        return 0
    if phase is None:
        return round((t1 - t0) / period)
    first = math.floor((t0 - phase) / period) + 1
    last = math.floor((t1 - phase) / period)
    return max(0, last - first + 1)


def refill_to_first(state: dict[str, Any]) -> tuple[float, float, int]:
    """(median, p99, count) of the simulator's refill-to-first-request delays, in ms."""
    return _stats([float(v) for v in state.get("refill_to_first_request_ms") or []])


def _stats(values: list[float]) -> tuple[float, float, int]:
    return h.percentile(values, 50), h.percentile(values, 99), len(values)


def _broker_summary(state: dict[str, Any]) -> dict[str, Any]:
    keep: dict[str, Any] = {}
    for name in ("tokens", "permits", "keepa"):
        if isinstance(state.get(name), dict):
            keep[name] = state[name]
    return keep
