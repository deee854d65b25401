"""Benchmark 4: heartbeat load. 500 registered workers heartbeating at 1 Hz.

The workers are virtual: ``bench.hb_holder`` processes, each holding 100 DEALER sockets that
say HELLO and then heartbeat once a second (staggered), reading the broker's heartbeats.
The baseline is the same broker process with no worker registered, measured first in the
same run. Broker CPU share = (utime+stime delta from ``/proc/<pid>/stat``) / window; RSS from
``/proc/<pid>/statm``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from bench import harness as h

NAME = "heartbeats"
TITLE = "4. Heartbeat load"

GOAL_CPU_SHARE = 0.05
GOAL_RSS_MB = 100.0
PER_HOLDER = 100
HEARTBEAT_S = 1.0
SETTLE_S = 3.0  # after GO, before the first window: registration churn is over
MAX_HOLD_S = 600.0  # the holders stop by themselves after this at the latest
SIM_REFILL_RATE = 1000
SIM_REFILL_PERIOD_S = 1.0


@dataclasses.dataclass(frozen=True)
class Params:
    workers: int
    window_s: float
    repeats: int
    idle_window_s: float
    large: int = 2000  # then this many, one window: the figure beside the goal's count

    @property
    def n_first(self) -> int:
        """The first holder's workers (measured alone before the others start)."""
        return min(PER_HOLDER, self.workers)


PROFILES = {
    "quick": Params(workers=500, window_s=8.0, repeats=3, idle_window_s=4.0),
    "full": Params(workers=500, window_s=60.0, repeats=5, idle_window_s=20.0),
}


def run(profile: str, log_dir: Path) -> str:
    p = PROFILES[profile]
    idle: list[dict[str, Any]] = []
    first: list[dict[str, Any]] = []  # with the first holder's workers only
    loaded: list[dict[str, Any]] = []
    holder_results: list[dict[str, Any]] = []
    registered = alive_end = alive_large = -1
    large: list[dict[str, Any]] = []  # p.large workers, one window
    with h.owned_processes(log_dir) as procs:
        address, broker = h.start_sim_and_broker(
            procs,
            refill_rate=SIM_REFILL_RATE,
            refill_period_s=SIM_REFILL_PERIOD_S,
            key_prefix="benchhb",
            extra={"FLEET_BROKER_MAX_WORKERS": str(p.large + PER_HOLDER)},
        )
        for r in range(p.repeats):
            h.progress(f"{NAME}: idle broker, window {r + 1}/{p.repeats} ({p.idle_window_s:.0f} s)")
            idle.append(_measure(broker.pid, p.idle_window_s))
        t_stop = time.time() + MAX_HOLD_S
        # The first holder alone, then all of them: how the cost grows with the count. A
        # holder is started only when it can be sent GO at once (its workers heartbeat from
        # GO on; registered workers left silent would be killed).
        holders = [_holder(procs, address, 0, p.n_first)]
        h.wait_ready(holders, timeout_s=120)
        holders[0].send(f"GO {t_stop:.6f}")
        time.sleep(SETTLE_S)
        h.progress(f"{NAME}: {p.n_first} heartbeating workers ({p.window_s:.0f} s)")
        first.append(_measure(broker.pid, p.window_s))
        holders += [
            _holder(procs, address, i, min(PER_HOLDER, p.workers - i))
            for i in range(PER_HOLDER, p.workers, PER_HOLDER)
        ]
        h.progress(f"{NAME}: registering {p.workers} workers in {len(holders)} processes")
        for c in holders[1:]:  # each as soon as it is ready: no registered worker stays silent
            h.wait_ready([c], timeout_s=120)
            c.send(f"GO {t_stop:.6f}")
        registered = _alive(address)
        time.sleep(SETTLE_S)
        for r in range(p.repeats):
            h.progress(
                f"{NAME}: {p.workers} heartbeating workers, window {r + 1}/{p.repeats} "
                f"({p.window_s:.0f} s)"
            )
            loaded.append(_measure(broker.pid, p.window_s))
        alive_end = _alive(address)
        more = [
            _holder(procs, address, i, min(PER_HOLDER, p.large - i))
            for i in range(p.workers, p.large, PER_HOLDER)
        ]
        h.progress(f"{NAME}: registering {p.large} workers in {len(holders) + len(more)} processes")
        for c in more:
            h.wait_ready([c], timeout_s=120)
            c.send(f"GO {t_stop:.6f}")
        holders += more
        time.sleep(SETTLE_S)
        h.progress(f"{NAME}: {p.large} heartbeating workers, one window ({p.window_s:.0f} s)")
        large.append(_measure(broker.pid, p.window_s))
        alive_large = _alive(address)
        for c in holders:
            c.send("STOP")
        holder_results = h.collect_results(holders, timeout_s=60)
    return _report(
        p, idle, first, loaded, holder_results, registered, alive_end, large, alive_large
    )


def _holder(procs: h.Processes, address: str, first: int, count: int) -> h.Child:
    index = first // PER_HOLDER
    return procs.start(
        f"holder{index}",
        h.python_command(
            "bench.hb_holder",
            "--broker",
            address,
            "--count",
            str(count),
            "--prefix",
            f"hb{index}",
            "--heartbeat-s",
            str(HEARTBEAT_S),
        ),
        pipes=True,
    )


def _alive(address: str) -> int:
    state = h.broker_status(address, timeout_s=10.0) or {}
    workers = state.get("workers") or []
    return sum(1 for w in workers if w.get("state") in ("alive", "waiting"))


def _measure(pid: int, window_s: float) -> dict[str, Any]:
    cpu0 = h.cpu_seconds(pid)
    t0 = time.monotonic()
    time.sleep(window_s)
    cpu1 = h.cpu_seconds(pid)
    elapsed = time.monotonic() - t0
    return {"cpu_pct": (cpu1 - cpu0) / elapsed * 100.0, "rss_mb": h.rss_bytes(pid) / 1e6}


def _report(
    p: Params,
    idle: list[dict[str, Any]],
    first: list[dict[str, Any]],
    loaded: list[dict[str, Any]],
    holders: list[dict[str, Any]],
    registered: int,
    alive_end: int,
    large: list[dict[str, Any]] | None = None,
    alive_large: int = -1,
) -> str:
    cpu = h.figures(loaded, "cpu_pct")
    rss = h.figures(loaded, "rss_mb")
    cpu_idle = h.figures(idle, "cpu_pct")
    rss_idle = h.figures(idle, "rss_mb")
    sent = sum(r["heartbeats_sent"] for r in holders)
    got = sum(r["heartbeat_in"] for r in holders)
    kills = sum(r.get("kill", 0) + r.get("disconnect", 0) for r in holders)
    reasons: dict[str, int] = {}
    for r in holders:
        for why, n in r.get("reasons", {}).items():
            reasons[why] = reasons.get(why, 0) + n
    late = max((r["late_s_max"] for r in holders), default=0.0)
    main = h.table(
        ["broker", "CPU (% of a core)", "RSS MB"],
        [
            ["idle, no worker (baseline)", cpu_idle.fmt(".2f"), rss_idle.fmt(".1f")],
            [
                f"{p.n_first} workers heartbeating at 1 Hz (one window)",
                h.figures(first, "cpu_pct").fmt(".2f"),
                h.figures(first, "rss_mb").fmt(".1f"),
            ],
            [f"{p.workers} workers heartbeating at 1 Hz", cpu.fmt(".2f"), rss.fmt(".1f")],
            [
                f"difference, {p.workers} workers − idle",
                f"{cpu.median - cpu_idle.median:+.2f}",
                f"{rss.median - rss_idle.median:+.1f}",
            ],
            *(
                [
                    [
                        f"{p.large} workers heartbeating at 1 Hz (one window; "
                        f"{alive_large} alive in status)",
                        h.figures(large, "cpu_pct").fmt(".2f"),
                        h.figures(large, "rss_mb").fmt(".1f"),
                    ]
                ]
                if large
                else []
            ),
        ],
    )
    facts = h.table(
        ["check", "value"],
        [
            ["workers alive in status after registration", registered],
            ["workers alive in status after the last window", alive_end],
            ["heartbeats sent by the workers", sent],
            ["heartbeats received from the broker", got],
            [
                "KILL / DISCONNECT received",
                f"{kills}"
                + (f" ({', '.join(f'{k} ×{n}' for k, n in reasons.items())})" if reasons else ""),
            ],
            ["latest heartbeat behind its schedule (s)", f"{late:.3f}"],
        ],
    )
    goals = h.table(
        ["goal", "measured", "verdict"],
        [
            [
                f"{p.workers} heartbeating workers cost the broker ≤ {GOAL_CPU_SHARE * 100:.0f} % "
                "of a core",
                f"{cpu.fmt('.2f')} %",
                h.verdict(cpu.median <= GOAL_CPU_SHARE * 100),
            ],
            [
                f"… and ≤ {GOAL_RSS_MB:.0f} MB RSS",
                f"{rss.fmt('.1f')} MB",
                h.verdict(rss.median <= GOAL_RSS_MB),
            ],
        ],
    )
    setup = (
        f"{p.workers} registered workers without {p.workers} OS processes: "
        f"{-(-p.workers // PER_HOLDER)} `bench.hb_holder` processes, each holding up to "
        f"{PER_HOLDER} DEALER sockets that say HELLO as separate workers and heartbeat at "
        f"{1 / HEARTBEAT_S:.0f} Hz (staggered, progress advancing). Same broker process "
        f"throughout: {p.repeats} windows of {p.idle_window_s:.0f} s idle (the baseline), one "
        f"of {p.window_s:.0f} s with the first {p.n_first} workers, then "
        f"{p.repeats} of {p.window_s:.0f} s with all {p.workers}."
    )
    parts = [setup, main, facts, goals]
    n_first = p.n_first
    c_first = h.figures(first, "cpu_pct").median
    per_first, per_all = c_first / n_first * 100, cpu.median / p.workers * 100
    growth = (
        "grows faster than the number of workers"
        if per_all > 1.2 * per_first
        else "grows no faster than the number of workers"
    )
    parts.append(
        f"What the cost is made of: it {growth}: {c_first:.1f} % of a core with {n_first} "
        f"workers ({per_first:.1f} % per 100), {cpu.median:.1f} % with {p.workers} "
        f"({per_all:.1f} % per 100). Per worker and second the broker receives, decodes and "
        "files one heartbeat and sends one back. A turn of its loop that carried only "
        "heartbeats skips the housekeeping (nothing it acts on changed), and the registry's "
        "timers (silence, stall, heartbeats to send) are walked on a 0.1 s tick, not per "
        "message: before those two changes the same run measured 23 % of a core, most of it "
        "in walking all 500 records once per heartbeat received. A py-spy profile of the "
        "broker under this load (development run) now puts most of its non-idle time in "
        "receiving and decoding messages."
    )
    return "\n\n".join(parts)
