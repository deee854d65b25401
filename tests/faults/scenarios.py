"""Fault scenarios against a fleet of real processes (``tests/fleet.py``), shared by the
fault suite (``tests/faults``) and the soak (``bench/soak.py``).

Each scenario injects one fault into a running fleet, waits (with a deadline: the stated
recovery bound) until the fleet works again, checks the invariants and returns what it
measured (seconds from the fault to each step of the recovery). The fleet is token-bound on
purpose (80 tokens every 0.25 s; three workers want more), so the broker grants on its
projection all the time and a ledger that lost track of a call would let the fleet overdraw
the account (a 429, or a negative balance). Permits reserve the most a call can cost, so a
cost estimate cannot be what overdraws it: the balance checks are sharp.

The invariants (``check``), after every scenario:

* no 429: ``status_429 == 0`` at the simulator;
* the balance never below ``-max_deficit`` (the default): ``min_tokens_left >= -240``;
* ``PRAGMA integrity_check`` is ``ok`` and every ASIN ever queued is a deal, a rejection or
  still a candidate;
* reconciled: at a quiet moment (nothing in flight, no cost assumed, the simulator's counter
  still across the status read), with ``consumed`` the simulator's tokens consumed less the
  external ones since the broker started, ``known`` the tokens the settles reported, and
  ``estimated`` the ledger's spend (known plus the costs assumed for unknown outcomes):
  ``known <= consumed <= estimated``, equal when no outcome was unknown; and the ledger's
  projected balance is within one refill step of the simulator's.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from fleet import Fleet
from support import Processes, wait_until

from common.config import BrokerSettings

REFILL_RATE = 80
REFILL_PERIOD_S = 0.25
STEP_MARGIN_MS = 100  # see quiet_snapshot
START_TOKENS = 600
LATENCY_SCALE = 0.02  # offer calls take 0.04-0.4 s: workers hold permits a while
# Two workers run the whole pipeline; the third only pages the deal feed: under a
# token-bound load the others rarely do (ingest has a backlog), and /deal must see faults.
ROLES = ("all", "all", "deals")
HEARTBEAT_S = 0.2
LIVENESS = 5
KILL_GRACE_S = 1.0
READ_TIMEOUT_S = 3.0
LEASE_TTL_S = 4.0
STALL_S = 5.0
CLAIM_TTL_S = 5.0
FAULT_ENV = {
    "FLEET_BROKER_HEARTBEAT_S": str(HEARTBEAT_S),
    "FLEET_BROKER_LIVENESS": str(LIVENESS),
    "FLEET_BROKER_KILL_GRACE_S": str(KILL_GRACE_S),
    "FLEET_KEEPA_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
    "FLEET_BROKER_LEASE_TTL_S": str(LEASE_TTL_S),
    "FLEET_BROKER_STALL_S": str(STALL_S),
    "FLEET_WORKER_CLAIM_TTL_S": str(CLAIM_TTL_S),
}

# Stated recovery bounds (deadlines of the waits; generous for a loaded 2-core machine).
START_BOUND_S = 30.0  # a worker process up, registered and spending
EXPIRY_BOUND_S = LEASE_TTL_S + 10.0  # a dead holder's lease expired at the broker
KILL_BOUND_S = LIVENESS * HEARTBEAT_S + KILL_GRACE_S + 10.0  # silent -> killed and gone
STALL_BOUND_S = STALL_S + KILL_GRACE_S + 10.0  # hung -> killed and gone
QUIET_BOUND_S = 30.0  # a quiet moment to reconcile at
FREEZE_BOUND_S = LIVENESS * HEARTBEAT_S + READ_TIMEOUT_S + 10.0  # no broker -> no spending
FREEZE_WINDOW_S = 1.0  # counters must stand still this long to count as frozen
FAULTS_TAKEN_BOUND_S = 30.0
DETECT_BOUND_S = 15.0

LIVE = ("alive", "waiting")
Figures = dict[str, Any]


def new_fleet(processes: Processes, tmp: Path, **kwargs: Any) -> Fleet:
    """The fault suite's fleet (not started)."""
    env = {**FAULT_ENV, **kwargs.pop("env", {})}
    return Fleet(
        processes,
        tmp,
        refill_rate=REFILL_RATE,
        refill_period_s=REFILL_PERIOD_S,
        tokens=START_TOKENS,
        latency_scale=LATENCY_SCALE,
        env=env,
        **kwargs,
    )


def start_fleet(fleet: Fleet, roles: tuple[str, ...] = ROLES) -> Figures:
    t0 = time.monotonic()
    fleet.start(workers=len(roles), roles=roles)
    for wid in list(fleet.workers):
        wait_spending(fleet, wid)
    wait_until(lambda: fleet.done() > 0, START_BOUND_S, interval=0.1, message="pipeline output")
    return {"start_s": round(time.monotonic() - t0, 2)}


# --- observation ------------------------------------------------------------------------


def entry(fleet: Fleet, worker_id: str, pid: int | None = None) -> dict[str, Any] | None:
    """The worker's live registration at the broker (of process ``pid`` when given)."""
    pid = fleet.workers[worker_id].pid if pid is None else pid
    for w in (fleet.status() or {}).get("workers", []):
        if w["id"] == worker_id and w["pid"] == pid and w["state"] in LIVE:
            return dict(w)
    return None


def wait_spending(fleet: Fleet, worker_id: str, bound_s: float = START_BOUND_S) -> float:
    """Wait until the current process of ``worker_id`` has spent tokens under a permit."""
    t0 = time.monotonic()
    wait_until(
        lambda: (entry(fleet, worker_id) or {}).get("tokens_spent", 0) > 0,
        bound_s,
        interval=0.05,
        message=lambda: (
            f"{worker_id} (exit {fleet.workers[worker_id].poll()}) spending; log:\n"
            f"{fleet.processes.log(worker_id)[-2000:]}"
        ),
    )
    return time.monotonic() - t0


def state(fleet: Fleet) -> dict[str, Any]:
    st = fleet.status(timeout=5)
    assert st is not None, "the broker did not answer STATUS"
    return st


def kills_of(fleet: Fleet, worker_id: str, pid: int) -> list[dict[str, Any]]:
    return [k for k in state(fleet)["kills"] if k["worker"] == worker_id and k["pid"] == pid]


def killed_and_gone(
    fleet: Fleet,
    worker_id: str,
    proc: subprocess.Popen[bytes],
    t0: float,
    reason: str,
    bound_s: float,
) -> tuple[float, float]:
    """Wait until the broker has killed ``proc`` for ``reason`` and the process has exited;
    the seconds from ``t0`` to each."""
    kill = wait_until(
        lambda: kills_of(fleet, worker_id, proc.pid),
        bound_s,
        interval=0.05,
        message=f"the broker killing {worker_id} as {reason}",
    )[0]
    killed_s = time.monotonic() - t0
    assert kill["reason"] == reason, kill
    wait_until(lambda: proc.poll() is not None, bound_s, message=f"{worker_id} gone")
    return killed_s, time.monotonic() - t0


def quiet_snapshot(fleet: Fleet, bound_s: float = QUIET_BOUND_S) -> tuple[dict, dict]:
    """(simulator state, broker status) at a moment when nothing is in flight, no cost is
    assumed, and the simulator's balance stood still across the status read: no spend and
    no refill step between the two reads, and the latest step at least STEP_MARGIN_MS old.
    (The broker places a step from when it received the latest envelope, later than Keepa
    sent it, so it sees a step late: by the settle's delay. A step that clamps a balance
    above the cap after a plan change moves it by far more than the refill rate the drift
    check allows.)"""

    def quiet() -> tuple[dict, dict] | None:
        before = fleet.sim_state()
        st = fleet.status()
        after = fleet.sim_state()
        if st is None:
            return None
        t = st["tokens"]
        if t["now"] is None or t["in_flight"] or t["assumed_spent"] or t["needs_sync"]:
            return None
        if before["tokens_consumed"] != after["tokens_consumed"]:
            return None
        if before["refill_steps"] != after["refill_steps"]:
            return None
        if before["refill_period_s"] * 1000 - before["refill_in_ms"] < STEP_MARGIN_MS:
            return None
        return before, st

    return wait_until(quiet, bound_s, interval=0.02, message="a quiet moment to reconcile at")


def reconcile(fleet: Fleet) -> Figures:
    """The spend and projection checks of the module docstring. After a broker restart
    (``fleet.consumed_base``: the simulator's consumption, less external, when the new broker
    started) the broker's ``known`` spend also counts the settles of the old broker's
    permits that workers kept for it, so only ``consumed <= estimated`` (equal without
    unknown outcomes) and the projection are checked."""
    consumed_base = fleet.consumed_base
    sim, st = quiet_snapshot(fleet)
    t, p = st["tokens"], st["permits"]
    consumed = sim["tokens_consumed"] - sim["external_consumed"] - (consumed_base or 0)
    known, estimated = t["spent"], t["tokens_spent"]
    detail = f"known {known}, consumed {consumed}, estimated {estimated}; sim {sim}; tokens {t}"
    assert consumed <= estimated, detail
    if consumed_base is None:
        assert known <= consumed, detail
    if not p["expired"] and not p["unknown_outcomes"]:
        assert consumed == estimated, detail
        if consumed_base is None:
            assert known == consumed, detail
    drift = t["now"] - sim["tokens_left"]
    assert abs(drift) <= sim["refill_rate"], f"ledger {t['now']} vs Keepa {sim['tokens_left']}"
    return {"consumed": consumed, "known": known, "estimated": estimated, "drift": drift}


def check(fleet: Fleet) -> Figures:
    """Every invariant (module docstring); returns the reconciliation figures."""
    fleet.check_invariants()
    return reconcile(fleet)


def faults_taken(fleet: Fleet, bound_s: float = FAULTS_TAKEN_BOUND_S) -> float:
    t0 = time.monotonic()
    wait_until(
        lambda: not fleet.sim_state()["faults_pending"],
        bound_s,
        interval=0.02,
        message=lambda: f"faults taken: {fleet.sim_state()['faults_pending']}",
    )
    return time.monotonic() - t0


def replace(fleet: Fleet, worker_id: str, t0: float) -> float:
    """Start the exited worker again (what supervisord does) and wait until it spends;
    returns the seconds from ``t0``."""
    fleet.restart_worker(worker_id)
    wait_spending(fleet, worker_id)
    return time.monotonic() - t0


def _sigkill(fleet: Fleet, worker_id: str) -> None:
    proc = fleet.workers[worker_id]
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


# --- worker faults ----------------------------------------------------------------------


def sigkill_permit_holder(fleet: Fleet, attempts: int = 3) -> Figures:
    """SIGKILL a worker while it holds a permit: its lease expires at the broker (cost assumed
    spent), the broker syncs, a new process takes its place."""
    for _ in range(attempts):
        expired0 = state(fleet)["permits"]["expired"]
        # A slow answer keeps one permit out for 1.5 s: a holder to find.
        fleet.sim_admin("fault", kind="delay", count=1, delay_s=1.5, path="/product")

        def holder() -> dict[str, Any] | None:
            for w in state(fleet)["workers"]:
                if w["state"] in LIVE and w["permits_held"] > 0 and w["id"] in fleet.workers:
                    return dict(w)
            return None

        victim = wait_until(holder, 30, interval=0.01, message="a worker holding a permit")
        t0 = time.monotonic()
        _sigkill(fleet, victim["id"])
        try:
            wait_until(
                lambda n=expired0: state(fleet)["permits"]["expired"] > n,
                EXPIRY_BOUND_S,
                interval=0.05,
            )
        except AssertionError:
            # It settled just before the signal landed: not the case under test; again.
            replace(fleet, victim["id"], t0)
            continue
        expired_s = time.monotonic() - t0
        back_s = replace(fleet, victim["id"], t0)
        figures = check(fleet)
        return {
            "worker": victim["id"],
            "lease_expired_s": round(expired_s, 2),
            "replaced_and_spending_s": round(back_s, 2),
            "reconciled_s": round(time.monotonic() - t0, 2),
            **figures,
        }
    raise AssertionError(f"no SIGKILL caught a worker holding a permit in {attempts} tries")


def sigkill_several(fleet: Fleet, *, seed: int, kills: int = 2, window_s: float = 2.0) -> Figures:
    """SIGKILL ``kills`` workers at random moments within ``window_s``; each is replaced."""
    rng = random.Random(seed)
    victims = rng.sample(sorted(fleet.workers), kills)
    moments = sorted(rng.uniform(0.0, window_s) for _ in victims)
    t0 = time.monotonic()
    for worker_id, at in zip(victims, moments, strict=True):
        time.sleep(max(0.0, t0 + at - time.monotonic()))  # the scenario's timing, not a wait
        _sigkill(fleet, worker_id)
    for worker_id in victims:
        fleet.restart_worker(worker_id)
    for worker_id in victims:
        wait_spending(fleet, worker_id)
    back_s = time.monotonic() - t0
    figures = check(fleet)
    return {
        "seed": seed,
        "killed": victims,
        "replaced_and_spending_s": round(back_s, 2),
        "reconciled_s": round(time.monotonic() - t0, 2),
        **figures,
    }


def sigstop(fleet: Fleet, worker_id: str) -> Figures:
    """SIGSTOP a worker: silent, so the broker kills it (SIGTERM + SIGCONT, SIGKILL after the
    grace); a new process takes its place."""
    proc = fleet.workers[worker_id]
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGSTOP)
    killed_s, gone_s = killed_and_gone(fleet, worker_id, proc, t0, "silent", KILL_BOUND_S)
    back_s = replace(fleet, worker_id, t0)
    figures = check(fleet)
    return {
        "killed_s": round(killed_s, 2),
        "gone_s": round(gone_s, 2),
        "exit": proc.returncode,
        "replaced_and_spending_s": round(back_s, 2),
        **figures,
    }


HANG_LINE = re.compile(r"FLEET_WORKER_FAULT: the work loop hangs now")


def stalled(fleet: Fleet, worker_id: str, *, hang_after: int = 1) -> Figures:
    """A worker whose work loop hangs while its heartbeat thread lives (the test-only fault
    ``FLEET_WORKER_FAULT=hang_after:N``): found stalled, killed, replaced."""
    old = fleet.workers[worker_id]
    old.send_signal(signal.SIGTERM)
    assert old.wait(timeout=30) == 0, fleet.processes.log(worker_id)[-2000:]
    hangs = len(HANG_LINE.findall(fleet.processes.log(worker_id)))
    proc = fleet.start_worker(
        worker_id,
        fleet.roles[worker_id],
        env={"FLEET_WORKER_FAULT": f"hang_after:{hang_after}"},
    )
    wait_until(
        lambda: len(HANG_LINE.findall(fleet.processes.log(worker_id))) > hangs,
        START_BOUND_S,
        interval=0.05,
        message=f"{worker_id}'s work loop hanging",
    )
    t0 = time.monotonic()
    killed_s, gone_s = killed_and_gone(fleet, worker_id, proc, t0, "stalled", STALL_BOUND_S)
    kill = wait_until(
        lambda: [k for k in kills_of(fleet, worker_id, proc.pid) if k["outcome"]],
        STALL_BOUND_S,
        interval=0.05,
        message="the kill recorded as done",
    )[0]
    back_s = replace(fleet, worker_id, t0)
    figures = check(fleet)
    return {
        "killed_s": round(killed_s, 2),
        "gone_s": round(gone_s, 2),
        "exit": proc.returncode,
        "action": f"{kill['action']} -> {kill['outcome']}",
        "replaced_and_spending_s": round(back_s, 2),
        **figures,
    }


# --- the database -----------------------------------------------------------------------


def _writes(fleet: Fleet) -> tuple[Any, ...]:
    """Changes whenever a worker commits anything that matters (state counters and marks)."""
    rows = fleet.query("select max(updated_at), count(*) from state")
    return (rows[0] if rows else (None, 0)) + (fleet.done(),)


def _batch_failures(fleet: Fleet) -> int:
    """Batches the workers' logs say failed (an exception at the work loop's boundary)."""
    logs = [fleet.processes.log(w) for w in fleet.workers]
    return sum(log.count("the batch failed") + log.count("locked") for log in logs)


def database_locked(fleet: Fleet, *, hold_s: float = 2.0) -> Figures:
    """A long reader (WAL: writers go on) and a long writer holding the write lock for
    ``hold_s`` (< stall_s): workers wait on the busy timeout and carry on; none is killed."""
    kills0 = len(state(fleet)["kills"])
    failures0 = _batch_failures(fleet)
    conn = sqlite3.connect(fleet.db, timeout=30, isolation_level=None)
    try:
        # A reader holding a snapshot open.
        conn.execute("BEGIN")
        conn.execute("select count(*) from deals").fetchone()
        w0 = _writes(fleet)
        t0 = time.monotonic()
        wait_until(lambda: _writes(fleet) != w0, 20, interval=0.05, message="writes go on")
        write_under_reader_s = time.monotonic() - t0
        conn.execute("COMMIT")
        # A writer holding the lock.
        conn.execute("BEGIN IMMEDIATE")
        w1 = _writes(fleet)
        end = time.monotonic() + hold_s
        while time.monotonic() < end:  # the fault's duration; nothing else may write
            assert _writes(fleet) == w1, "a write got through a held write lock"
            time.sleep(0.05)
        conn.execute("ROLLBACK")
        t1 = time.monotonic()
        wait_until(lambda: _writes(fleet) != w1, 20, interval=0.02, message="writes resume")
        resumed_s = time.monotonic() - t1
    finally:
        conn.close()
    assert len(state(fleet)["kills"]) == kills0, "a worker was killed for waiting on the lock"
    assert _batch_failures(fleet) == failures0, "a batch failed on the lock (busy timeout?)"
    for worker_id, proc in fleet.workers.items():
        assert proc.poll() is None, f"{worker_id} exited"
    figures = check(fleet)
    return {
        "write_under_long_reader_s": round(write_under_reader_s, 2),
        "writes_resumed_after_lock_s": round(resumed_s, 2),
        **figures,
    }


def unwritable_database(fleet: Fleet, tmp: Path, *, starts: int = 3) -> Figures:
    """A worker whose database path cannot be created: exit 73 with a clear message, before
    it ever talks to the broker (a supervisord crash loop spends nothing); ``starts`` times."""
    not_a_dir = tmp / "not-a-directory"
    not_a_dir.write_text("a file where the database directory should be\n")
    bad_db = not_a_dir / "fleet.db"
    took = []
    for i in range(starts):
        worker_id = "w-bad-db"
        t0 = time.monotonic()
        proc = fleet.start_worker(worker_id, db=str(bad_db))
        assert proc.wait(timeout=30) == 73, fleet.processes.log(worker_id)[-2000:]
        took.append(time.monotonic() - t0)
        log = fleet.processes.log(worker_id)
        assert log.count("cannot create the directory") == i + 1, log
        assert str(bad_db) in log, log
        assert "connected to broker" not in log, log
        assert "Traceback" not in log, log
    st = state(fleet)
    assert all(w["id"] != "w-bad-db" for w in st["workers"]), "it registered at the broker"
    del fleet.workers["w-bad-db"]
    return {"starts": starts, "exit": 73, "exit_s_max": round(max(took), 2)}


# --- the broker -------------------------------------------------------------------------

GRANT_LINE = re.compile(r"GRANT \S+ to ")
SYNC_LINE = re.compile(r"Keepa /token \(start\): -?\d+ tokens left")  # the answer, not the ask


def broker_restart(fleet: Fleet) -> Figures:
    """SIGKILL the broker with a call in flight: workers stop spending (fail closed); a new
    broker starts (its first /token answer delayed), syncs with Keepa before its first
    grant, the workers reconnect by themselves (re-sending the settle they kept) and spend."""
    assert fleet.broker is not None
    kept0 = _kept_settles(fleet)
    # Plenty of tokens on the account, so the stale figure in the kept settle would be
    # enough to grant on: what must not happen before the new broker's own /token answer.
    fleet.sim_admin("tokens", tokens=40 * REFILL_RATE)
    # A call under way when the broker dies, answered (within the read timeout) after the
    # worker has noticed the broker is gone (liveness x heartbeat = 1 s).
    fleet.sim_admin("fault", kind="delay", count=1, delay_s=2.0, path="/product")
    faults_taken(fleet)
    t0 = time.monotonic()
    fleet.broker.send_signal(signal.SIGKILL)
    fleet.broker.wait(timeout=10)
    base = wait_until(
        lambda: fleet.frozen(FREEZE_WINDOW_S), FREEZE_BOUND_S, message="spending stopped"
    )
    frozen_s = time.monotonic() - t0 - FREEZE_WINDOW_S
    assert fleet.frozen(0.5) == base, "a worker spent tokens with no broker"
    # The slow call ended with no broker: its worker keeps the settle for the next one.
    wait_until(lambda: _kept_settles(fleet) > kept0, FREEZE_BOUND_S, message="a kept settle")
    sim = fleet.sim_state()
    fleet.consumed_base = sim["tokens_consumed"] - sim["external_consumed"]
    # The new broker's first /token answer comes late: the workers are back before it, and
    # the kept settle (a stale Keepa figure) arrives first. Grants must wait for /token.
    fleet.sim_admin("fault", kind="delay", count=1, delay_s=1.5, path="/token")
    t1 = time.monotonic()
    name = f"broker-{sum(n.startswith('broker') for n, _ in fleet.processes.procs) + 1}"
    fleet.start_broker(name, env={"FLEET_LOG_LEVEL": "DEBUG"})
    for worker_id in fleet.workers:
        wait_until(lambda w=worker_id: entry(fleet, w), START_BOUND_S, interval=0.05)
    reconnected_s = time.monotonic() - t1
    wait_until(
        lambda: fleet.sim_state()["tokens_consumed"] > base[0],
        START_BOUND_S,
        interval=0.05,
        message="spending resumes",
    )
    resumed_s = time.monotonic() - t1
    log = wait_until(
        lambda: (text := fleet.processes.log(name)) and SYNC_LINE.search(text) and text,
        START_BOUND_S,
        interval=0.05,
        message="the new broker's /token answer",
    )
    sync, grant = SYNC_LINE.search(log), GRANT_LINE.search(log)
    assert sync is not None and grant is not None, log[-3000:]
    assert sync.start() < grant.start(), "the new broker granted before its /token sync"
    figures = check(fleet)
    return {
        "spending_stopped_s": round(frozen_s, 2),
        "reconnected_s": round(reconnected_s, 2),
        "spending_resumed_s": round(resumed_s, 2),
        "first_grant_after_restart_s": _first_grant_s(log),
        **figures,
    }


def _kept_settles(fleet: Fleet) -> int:
    """Settles of answered calls (``ok``: with Keepa's envelope) kept for the next broker."""
    return sum(
        len(re.findall(r"\(ok\) could not be sent .*: kept", fleet.processes.log(w)))
        for w in fleet.workers
    )


def _first_grant_s(log: str) -> float | None:
    """Seconds from the broker's start line to its first GRANT, from the log's timestamps."""
    stamps = re.findall(
        r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?(listening on|GRANT )", log, re.M
    )
    starts = [t for t, what in stamps if what.startswith("listening")]
    grants = [t for t, what in stamps if what.startswith("GRANT")]
    if len(starts) != 1 or not grants:
        return None
    fmt = "%Y-%m-%d %H:%M:%S,%f"
    delta = datetime.datetime.strptime(grants[0], fmt) - datetime.datetime.strptime(starts[-1], fmt)
    return round(delta.total_seconds(), 2)


# --- Keepa faults -----------------------------------------------------------------------

KEEPA_FAULTS: list[dict[str, Any]] = [
    {"kind": "500", "count": 1, "path": "/product"},
    {"kind": "500", "count": 1, "path": "/token"},
    {"kind": "delay", "count": 1, "path": "/product", "delay_s": READ_TIMEOUT_S + 1.0},
    {"kind": "delay", "count": 1, "path": "/token", "delay_s": READ_TIMEOUT_S + 1.0},
    {"kind": "malformed", "count": 1, "path": "/product"},
    {"kind": "drop", "count": 1, "path": "/product"},
    {"kind": "drop", "count": 1, "path": "/deal"},
]


def keepa_faults(fleet: Fleet) -> Figures:
    """Keepa answers 500s, answers too late (past the client's read timeout), answers
    malformed bodies and drops connections, on /product, /deal and /token. Unknown outcomes
    are assumed spent and followed by a /token sync; the fleet carries on."""
    st0 = state(fleet)
    t0 = time.monotonic()
    for fault in KEEPA_FAULTS:
        fleet.sim_admin("fault", **fault)
    taken_s = faults_taken(fleet)
    done0 = fleet.done()
    wait_until(lambda: fleet.done() > done0, START_BOUND_S, interval=0.05, message="working")
    working_s = time.monotonic() - t0
    figures = check(fleet)
    reconciled_s = time.monotonic() - t0
    st = state(fleet)
    k0, k = st0["keepa"], st["keepa"]
    errors = {
        key: n - k0["errors_by_status"].get(key, 0) for key, n in k["errors_by_status"].items()
    }
    # Every fault is seen for what it is: 500s with their envelope (settled, nothing
    # assumed), the rest unknown outcomes (assumed spent, then a /token sync).
    assert errors.get("500", 0) >= 2, errors
    assert errors.get("timeout", 0) >= 1, errors  # /product past the read timeout
    assert errors.get("no_response", 0) >= 1, errors  # /token past the read timeout
    assert errors.get("connection_error", 0) >= 2, errors
    assert errors.get("200", 0) >= 1, errors  # a malformed 200
    assert k["sync_errors"] - k0["sync_errors"] >= 2, k
    assert st["permits"]["unknown_outcomes"] - st0["permits"]["unknown_outcomes"] >= 4
    return {
        "faults_taken_s": round(taken_s, 2),
        "working_s": round(working_s, 2),
        "reconciled_s": round(reconciled_s, 2),
        "errors": errors,
        **figures,
    }


def external_and_plan(fleet: Fleet) -> Figures:
    """The plan goes up mid-run; another program spends on the same key; the plan goes back
    down. The broker re-plans at once on each, shows the stranger's spend as unaccounted,
    and never lets the fleet cause a 429."""
    up = REFILL_RATE * 10
    t0 = time.monotonic()
    fleet.sim_admin("plan", refill_rate=up)
    wait_until(
        lambda: state(fleet)["tokens"]["refill_rate"] == up,
        DETECT_BOUND_S,
        interval=0.02,
        message="the broker seeing the new plan",
    )
    plan_up_s = time.monotonic() - t0
    assert state(fleet)["tokens"]["cap"] == 60 * up
    # Let the balance rise well above what the fleet holds in flight, then a stranger spends
    # more than the fleet's permits in flight can hide (the broker subtracts every permit in
    # flight at its full reservation, so only what exceeds them is sure to be a stranger's).
    stranger = 2500
    wait_until(lambda: fleet.sim_state()["tokens_left"] > 2 * stranger, 30, interval=0.1)
    before = state(fleet)["tokens"]["unaccounted"]
    t1 = time.monotonic()
    fleet.sim_admin("consume", tokens=stranger)
    wait_until(
        lambda: state(fleet)["tokens"]["unaccounted"] > before,
        DETECT_BOUND_S,
        interval=0.02,
        message="the broker noticing the stranger's spend",
    )
    detected_s = time.monotonic() - t1
    seen = state(fleet)["tokens"]["unaccounted"] - before
    assert 0 < seen <= stranger, seen
    t2 = time.monotonic()
    fleet.sim_admin("plan", refill_rate=REFILL_RATE)
    wait_until(
        lambda: state(fleet)["tokens"]["refill_rate"] == REFILL_RATE,
        DETECT_BOUND_S,
        interval=0.02,
        message="the broker seeing the plan back down",
    )
    plan_down_s = time.monotonic() - t2
    assert state(fleet)["tokens"]["max_cost"] == 60 * REFILL_RATE + BrokerSettings().max_deficit
    done0 = fleet.done()
    wait_until(lambda: fleet.done() > done0, START_BOUND_S, interval=0.05, message="working")
    figures = check(fleet)
    return {
        "plan_up_seen_s": round(plan_up_s, 2),
        "stranger_spent": stranger,
        "unaccounted_seen": seen,
        "stranger_detected_s": round(detected_s, 2),
        "plan_down_seen_s": round(plan_down_s, 2),
        **figures,
    }
