"""Benchmark 7's pipeline rows: the real ``keepa-fleet worker`` (ingest stage: the stats
peek, offers bought for the survivors' commit) draining a fixed backlog in Keepa's
proportions, beside the bare permit client's rows of the same plan and N.

A run: a simulator of its own (latency × P / 60 s), N workers (role ``ingest``) on a
database holding the backlog as candidates; once every worker waits for the broker, the
account is created with one step's tokens and the broker starts (GO). The run ends when no
candidate is left (or at the time limit). The pipeline's calls are not all alike (a peek
of up to 100 ASINs at 1 token each, a commit of up to 20 with offers), so its backlog cost
is what the simulator charged; the limit is ⌈(that − start balance) ÷ rate⌉ steps, as for
the bare client.
"""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path
from typing import Any

from bench import backlog, results_per_token
from bench import harness as h
from common.storage import Storage

DOMAIN = 1
READY_TEXT = "waiting for the broker"
POLL_S = 0.1


def run_cell(
    *,
    plan: int,
    refill_period_s: float,
    processes: int,
    asins: list[str],
    time_limit_s: float,
    seed: int,
    log_dir: Path,
) -> dict[str, Any]:
    log_dir.mkdir(parents=True)
    db = log_dir / "fleet.db"
    storage = Storage.open(str(db))
    try:
        storage.add_candidates(DOMAIN, asins, source="bench", now=time.time())
    finally:
        storage.close()
    with h.owned_processes(log_dir) as procs:
        sim = h.start_sim(
            procs,
            refill_rate=plan,
            refill_period_s=refill_period_s,
            latency_scale=refill_period_s / 60.0,
            seed=seed,
        )
        key = "bench-pipe-" + uuid.uuid4().hex[:12]
        address = f"tcp://127.0.0.1:{h.free_port()}"
        env = h.broker_env(address, sim.url, key, refill_period_s)
        env["FLEET_WORKER_PEEK_OFFERS"] = "0"
        env["FLEET_WORKER_REFRESH_AFTER_S"] = str(3600.0 * 24)
        # Started before the broker: they must find it at once when it comes (the link's
        # reconnect backoff capped low), and say that they wait for it (an INFO line).
        env["FLEET_WORKER_RECONNECT_MAX_S"] = "0.2"
        env["FLEET_LOG_LEVEL"] = "INFO"
        workers = [
            procs.start(
                f"w{i}",
                h.fleet_command("worker", "--id", f"w{i}", "--role", "ingest", "--db", str(db)),
                env=env,
            )
            for i in range(processes)
        ]
        h.wait_until(
            lambda: all(READY_TEXT in w.log_tail(100_000) for w in workers),
            h.START_TIMEOUT_S,
            "every worker to wait for the broker",
        )
        sim.admin("tokens", key=key, tokens=plan)
        s0 = sim.state(key)
        t_go = time.time()
        h.start_broker(procs, env)
        deadline = time.monotonic() + time_limit_s
        next_line = time.monotonic() + 10.0
        left = len(asins)
        while time.monotonic() < deadline:
            left = results_per_token.waiting(db)
            if left == 0:
                break
            if time.monotonic() >= next_line:
                h.progress(f"  pipeline N={processes}: {len(asins) - left}/{len(asins)} judged")
                next_line += 10.0
            time.sleep(POLL_S)
        t_end = time.time()
        s1 = sim.state(key)
        procs.stop_all()
    verdicts = results_per_token.verdicts(db)
    return summarize(plan, refill_period_s, len(asins), left == 0, s0, s1, t_go, t_end, verdicts)


def summarize(
    plan: int,
    period: float,
    size: int,
    finished: bool,
    s0: dict[str, Any],
    s1: dict[str, Any],
    t_go: float,
    t_end: float,
    verdicts: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The figures of one pipeline run, named as ``backlog.summarize`` names them."""
    # Supply up to the last charged request (the bare client's rows: up to the last send).
    last = float(s1.get("last_charged_at") or t_end)
    refills = max(
        0, math.floor((last - float(s0["created_at"])) / period) - int(s0["refill_steps"])
    )
    initial = int(s0["tokens_left"])
    supplied = initial + plan * refills
    used = int(s1["tokens_consumed"]) - int(s0["tokens_consumed"])
    r2f = backlog.refill_to_first(s1)
    return {
        "finished": finished,
        "items": len(verdicts),
        "deals": sum(1 for v in verdicts.values() if v["verdict"] == "deal"),
        "backlog": size,
        "wall_s": t_end - t_go,
        "elapsed_s": t_end - t_go,
        "last_send_s": last - t_go,
        "initial_tokens": initial,
        "supplied": supplied,
        "used": used,
        "utilization": used / supplied if supplied > 0 else float("nan"),
        "status_429": int(s1.get("status_429", 0)) - int(s0.get("status_429", 0)),
        "min_tokens_left": int(s1.get("min_tokens_left", s1["tokens_left"])),
        "token_calls": int(s1.get("token_calls", 0)),
        "r2f_median_ms": r2f[0],
        "r2f_p99_ms": r2f[1],
        "tokens_left_end": int(s1["tokens_left"]),
        "permit_waits_ms": [],
        "mean_call_s": float("nan"),
    }
