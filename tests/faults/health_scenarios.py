"""Issue 12's fault scenarios: storage that stops taking writes, a key without access, a
malformed key, Keepa answering 503 for a while, Keepa down when the fleet starts.

Each scenario checks, against a fleet of real processes (``tests/fleet.py``):

* tokens spent during the fault are no more than what was granted (in flight) when the
  fault was seen: nothing new is bought while the result cannot be kept or Keepa refuses;
* nothing paid for is lost: every ASIN ever queued is a deal, a rejection or still queued,
  and the database is sound (``Fleet.check_invariants``: balance never below -max_deficit);
* status names the fault within ``NAME_BOUND_S`` of it beginning (a storage fault: for
  every worker, each given new rows to write first, ``every_worker_busy``);
* the fleet recovers by itself within ``RECOVER_BOUND_S`` of the fault ending: health ok and
  tokens spent again;
* one log line at each edge: a worker says "<what>: <state> began" at most once per fault
  and "ended" once after it; no line per retry.

The time scale is shortened: a fault lasts ``HOLD_S`` (Keepa's 60 s of 503s: 4 s), and the
broker re-checks ``/token`` at least every ``RECHECK_MAX_S`` (60 s in production).
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import requests
from faults import scenarios
from fleet import Fleet
from support import Processes, fleet_command, wait_until

from common.config import KeepaSettings
from common.storage import Storage

DOMAIN = KeepaSettings().domain  # the fleet's

NAME_BOUND_S = 5.0
RECOVER_BOUND_S = 5.0
HOLD_S = 4.0  # how long a fault lasts (observed: nothing may be spent beyond the bound)
RECHECK_MAX_S = 1.0
ROLES = ("all", "all")
HEALTH_ENV = {"FLEET_BROKER_RECHECK_MAX_S": str(RECHECK_MAX_S)}
MAX_LINES_DURING_FAULT = 4  # per worker: the edges, a give-back; never one per retry
BACKLOG = 800  # candidates queued before a storage fault: every worker is writing new rows
BUSY_BOUND_S = 15.0  # every worker spending on that backlog
Figures = dict[str, Any]


def new_fleet(processes: Processes, tmp: Path, **kwargs: Any) -> Fleet:
    env = {
        **HEALTH_ENV,
        "FLEET_WORKER_STORAGE_FAULT": str(tmp / "storage-fault"),
        **kwargs.pop("env", {}),
    }
    return scenarios.new_fleet(processes, tmp, env=env, **kwargs)


def start(fleet: Fleet, *, sim: bool = True) -> None:
    """The simulator (unless ``sim`` is False), the broker and the workers of ROLES, one
    after the other: each worker is spending before the next one starts. (Workers opening a
    new database at the same instant can fail with "database is locked" while one of them
    switches it to WAL: exit 73, found here, not issue 12's.)"""
    if sim:
        fleet.start_sim()
    else:
        fleet.reserve_sim_port()  # Keepa down: the broker knows where it will be
    fleet.start_broker()
    for i, role in enumerate(ROLES):
        fleet.start_worker(f"w{i}", role)
        if sim:
            scenarios.wait_spending(fleet, f"w{i}")


def storage_flag(fleet: Fleet) -> Path:
    return Path(fleet.env["FLEET_WORKER_STORAGE_FAULT"])


# --- observation ------------------------------------------------------------------------


def problems(fleet: Fleet) -> list[dict[str, Any]]:
    st = fleet.status(timeout=5)
    assert st is not None, "the broker did not answer STATUS"
    return list(st["health"]["problems"])


def names(fleet: Fleet) -> list[str]:
    return [p["problem"] for p in problems(fleet)]


def consumed(fleet: Fleet) -> int:
    return int(fleet.sim_state()["tokens_consumed"])


def status_cli(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fleet_command("status", "--broker", fleet.broker_address, "--timeout", "5", *args),
        capture_output=True,
        text=True,
        timeout=60,
        env={**fleet.env},
        cwd=Path(__file__).resolve().parents[2],
    )


def count(text: str, pattern: str) -> int:
    return len(re.findall(pattern, text))


def worker_logs(fleet: Fleet) -> dict[str, str]:
    return {w: fleet.processes.log(w) for w in fleet.workers}


def wait_named(fleet: Fleet, problem: str, *, every_worker: bool = False) -> float:
    """Seconds until status names ``problem`` (for each worker, with ``every_worker``)."""
    t0 = time.monotonic()
    want = len(fleet.workers) if every_worker else 1
    wait_until(
        lambda: names(fleet).count(problem) >= want,
        NAME_BOUND_S,
        interval=0.05,
        message=lambda: f"status naming {problem}: {problems(fleet)}",
    )
    return time.monotonic() - t0


def unseen_asins(fleet: Fleet, n: int) -> list[str]:
    """``n`` catalog ASINs the fleet has never seen (so each becomes new rows)."""
    seen = {row[0] for row in fleet.query("select asin from seen")}
    out: list[str] = []
    offset = 0
    while len(out) < n:
        resp = requests.get(
            f"{fleet.sim_url}/_sim/catalog", params={"offset": offset, "limit": 1000}, timeout=5
        )
        resp.raise_for_status()
        page = resp.json()["asins"]
        assert page, f"the catalog has fewer than {n} ASINs the fleet has not seen"
        out += [a for a in page if a not in seen][: n - len(out)]
        offset += len(page)
    return out


def spent_by_worker(fleet: Fleet) -> dict[str, int]:
    """Tokens spent by each worker's current process, from one STATUS (0: not live)."""
    live = {
        w["id"]: int(w.get("tokens_spent", 0))
        for w in scenarios.state(fleet)["workers"]
        if w["id"] in fleet.workers
        and w["pid"] == fleet.workers[w["id"]].pid
        and w["state"] in scenarios.LIVE
    }
    return {w: live.get(w, 0) for w in fleet.workers}


def every_worker_busy(fleet: Fleet) -> None:
    """Queue BACKLOG new candidates and wait until every worker spends on them: the storage
    fault then meets each worker writing new rows. (A full disk still takes writes that fit
    in the file's free space: an idle worker, or one only updating rows, does not hit it,
    and cannot say it. Found by a random test order that ran this after the fleet had
    caught up with the feed.)"""
    spent0 = spent_by_worker(fleet)
    with Storage.open(fleet.db) as storage:
        queued = storage.add_candidates(
            DOMAIN, unseen_asins(fleet, BACKLOG), source="test", now=time.time()
        )
    # Most, not all: the deal feed may have queued one of them since ``seen`` was read.
    assert queued >= BACKLOG * 9 // 10, f"{queued} of {BACKLOG} new candidates queued"
    wait_until(
        lambda: all(n > spent0[w] for w, n in spent_by_worker(fleet).items()),
        BUSY_BOUND_S,
        interval=0.05,
        message=lambda: f"every worker spending on the backlog (before: {spent0})",
    )


def bound_at(fleet: Fleet) -> tuple[int, int]:
    """(tokens granted and in flight, tokens consumed at the simulator): read in that order,
    so a call in flight across the two reads is counted twice (the safe side), never not."""
    st = fleet.status(timeout=5)
    assert st is not None
    in_flight = int(st["tokens"]["in_flight"] or 0)
    return in_flight, consumed(fleet)


def hold_and_check_spend(fleet: Fleet, in_flight: int, consumed0: int) -> int:
    """Keep the fault for HOLD_S (the scenario's duration: observed, not a stand-in wait),
    then assert nothing beyond what was in flight was spent; the tokens spent."""
    time.sleep(HOLD_S)
    spent = consumed(fleet) - consumed0
    assert spent <= in_flight, f"{spent} tokens spent during the fault, {in_flight} granted"
    return spent


def wait_recovered(fleet: Fleet) -> float:
    """Seconds until health is ok and the fleet spends tokens again."""
    t0 = time.monotonic()
    before = consumed(fleet)
    wait_until(
        lambda: not problems(fleet) and consumed(fleet) > before,
        RECOVER_BOUND_S,
        interval=0.05,
        message=lambda: f"recovered: {problems(fleet)}, consumed {consumed(fleet)} > {before}",
    )
    return time.monotonic() - t0


def lines_after(logs0: dict[str, str], fleet: Fleet) -> dict[str, list[str]]:
    """The log lines each worker wrote since ``logs0`` (DEBUG lines aside)."""
    out = {}
    for w, text in worker_logs(fleet).items():
        new = text[len(logs0.get(w, "")) :]
        out[w] = [ln for ln in new.splitlines() if ln.strip() and " DEBUG " not in ln]
    return out


def assert_said_once(lines: dict[str, list[str]], what: str, state: str) -> None:
    for w, new in lines.items():
        began = sum(1 for ln in new if f"{what}: {state} began" in ln)
        assert began <= 1, f"{w} said {what} {state} began {began} times:\n" + "\n".join(new)
        assert not any("Traceback" in ln for ln in new), f"{w}:\n" + "\n".join(new)


# --- scenarios --------------------------------------------------------------------------


def storage_fault(fleet: Fleet, mode: str, problem: str) -> Figures:
    """The database stops taking writes (``mode``: ``full`` -> SQLITE_FULL, ``readonly`` ->
    SQLITE_READONLY; the test-only fault of ``workers.storage_gate``), then takes them again.
    Held results land; nothing is bought while they cannot be kept."""
    flag = storage_flag(fleet)
    every_worker_busy(fleet)
    logs0 = worker_logs(fleet)
    broker0 = fleet.processes.log("broker")
    flag.write_text(mode)
    named_s = wait_named(fleet, f"storage_{problem}", every_worker=True)
    in_flight, consumed0 = bound_at(fleet)
    text = status_cli(fleet)
    assert text.returncode == 0, text.stderr
    assert "database" in "\n".join(text.stdout.splitlines()[:4]), text.stdout
    check = status_cli(fleet, "--check")
    assert check.returncode == 1, (check.returncode, check.stdout, check.stderr)
    spent = hold_and_check_spend(fleet, in_flight, consumed0)
    during = lines_after(logs0, fleet)
    flag.unlink()
    recovered_s = wait_recovered(fleet)
    healthy = status_cli(fleet, "--check")
    assert (healthy.returncode, healthy.stdout.strip()) == (0, "health: ok"), healthy
    lines = lines_after(logs0, fleet)
    for w, new in lines.items():
        assert sum(f"storage: {problem} began" in ln for ln in new) == 1, (w, new)
        assert sum(f"storage: {problem} ended" in ln for ln in new) == 1, (w, new)
        assert not any("the batch failed" in ln or "Traceback" in ln for ln in new), new
        assert not any("claimed too often" in ln for ln in new), new
        # From the worker's first failed write on: a full disk still takes the writes that
        # fit in the file's free pages, and the work done meanwhile is no retry.
        began = [i for i, ln in enumerate(during[w]) if f"storage: {problem} began" in ln]
        assert began, (w, during[w])
        fault_lines = [ln for ln in during[w][began[0] :] if "storage fault" not in ln]
        assert len(fault_lines) <= MAX_LINES_DURING_FAULT, "\n".join(fault_lines)
    broker_new = fleet.processes.log("broker")[len(broker0) :]
    for w in fleet.workers:
        assert count(broker_new, rf"worker {w} storage: {problem} began") == 1, broker_new
        assert count(broker_new, rf"worker {w} storage: {problem} ended") == 1, broker_new
    fleet.check_invariants()  # every ASIN accounted for: held writes landed
    return {
        "named_s": round(named_s, 2),
        "spent_during": spent,
        "in_flight_when_seen": in_flight,
        "recovered_s": round(recovered_s, 2),
    }


def key_lapses(fleet: Fleet) -> Figures:
    """The key's subscription lapses (Keepa answers 402), then is paid again."""
    logs0 = worker_logs(fleet)
    broker0 = fleet.processes.log("broker")
    fleet.sim_admin("paid", paid=0)
    named_s = wait_named(fleet, "key_no_access")
    in_flight, consumed0 = bound_at(fleet)
    text = status_cli(fleet)
    assert text.returncode == 0, text.stderr
    head = "\n".join(text.stdout.splitlines()[:3])
    assert "key has no access" in head, text.stdout
    check = status_cli(fleet, "--check")
    assert check.returncode == 1, (check.returncode, check.stdout, check.stderr)
    assert "key has no access" in check.stdout, check.stdout
    syncs0 = fleet.sim_state()["token_calls"]
    spent = hold_and_check_spend(fleet, in_flight, consumed0)
    # The broker keeps asking /token (free), at least every RECHECK_MAX_S.
    assert fleet.sim_state()["token_calls"] - syncs0 >= HOLD_S / RECHECK_MAX_S / 2
    during = lines_after(logs0, fleet)
    fleet.sim_admin("paid", paid=1)
    recovered_s = wait_recovered(fleet)
    for w, new in during.items():
        assert len(new) <= MAX_LINES_DURING_FAULT, f"{w}: a line per retry?\n" + "\n".join(new)
    assert_said_once(lines_after(logs0, fleet), "permits", "keepa_no_access")
    broker_new = fleet.processes.log("broker")[len(broker0) :]
    assert count(broker_new, "Keepa: key_no_access began") == 1, broker_new
    assert count(broker_new, "Keepa: key_no_access ended") == 1, broker_new
    assert "too_large" not in broker_new, broker_new
    fleet.check_invariants()
    return {"named_s": round(named_s, 2), "spent_during": spent, "recovered_s": recovered_s}


def keepa_503(fleet: Fleet) -> Figures:
    """Keepa answers 503 on every endpoint for HOLD_S (60 s on the issue's time scale)."""
    logs0 = worker_logs(fleet)
    broker0 = fleet.processes.log("broker")
    fleet.sim_admin("fault", kind="503", count=1_000_000)
    named_s = wait_named(fleet, "keepa_unreachable")
    in_flight, consumed0 = bound_at(fleet)
    check = status_cli(fleet, "--check")
    assert check.returncode == 1, (check.returncode, check.stdout, check.stderr)
    spent = hold_and_check_spend(fleet, in_flight, consumed0)
    during = lines_after(logs0, fleet)
    fleet.sim_admin("faults_clear")
    recovered_s = wait_recovered(fleet)
    for w, new in during.items():
        assert len(new) <= MAX_LINES_DURING_FAULT, f"{w}: a line per retry?\n" + "\n".join(new)
    assert_said_once(lines_after(logs0, fleet), "permits", "keepa_unreachable")
    broker_new = fleet.processes.log("broker")[len(broker0) :]
    assert count(broker_new, "Keepa: keepa_unreachable began") == 1, broker_new
    assert count(broker_new, "Keepa: keepa_unreachable ended") == 1, broker_new
    fleet.check_invariants()
    return {"named_s": round(named_s, 2), "spent_during": spent, "recovered_s": recovered_s}


def keepa_down_at_start(fleet: Fleet) -> Figures:
    """The broker and workers start while Keepa does not answer at all; Keepa comes up."""
    start(fleet, sim=False)
    t0 = time.monotonic()
    wait_until(
        lambda: "keepa_unreachable" in names(fleet),
        NAME_BOUND_S,
        interval=0.05,
        message=lambda: f"status naming keepa_unreachable: {problems(fleet)}",
    )
    named_s = time.monotonic() - t0
    check = status_cli(fleet, "--check")
    assert check.returncode == 1, (check.returncode, check.stdout, check.stderr)
    assert "Keepa unreachable" in check.stdout, check.stdout
    time.sleep(HOLD_S / 2)  # the fault lasts a while (observed: every worker still alive)
    for w, proc in fleet.workers.items():
        assert proc.poll() is None, fleet.processes.log(w)[-2000:]
    fleet.start_sim()
    t1 = time.monotonic()
    wait_until(
        lambda: not problems(fleet) and consumed(fleet) > 0,
        RECOVER_BOUND_S,
        interval=0.05,
        message=lambda: f"recovered: {problems(fleet)}",
    )
    recovered_s = time.monotonic() - t1
    for w in fleet.workers:
        scenarios.wait_spending(fleet, w)
    assert_said_once(lines_after({}, fleet), "permits", "keepa_unreachable")
    broker_log = fleet.processes.log("broker")
    assert count(broker_log, "Keepa: keepa_unreachable began") == 1, broker_log
    assert count(broker_log, "Keepa: keepa_unreachable ended") == 1, broker_log
    assert count(broker_log, r"Keepa /token failed") == 1, broker_log  # then said once
    fleet.check_invariants()
    return {"named_s": round(named_s, 2), "recovered_s": round(recovered_s, 2)}


def malformed_key(fleet: Fleet) -> Figures:
    """A malformed key: Keepa answers 400 on /token. Status names it, nothing is granted,
    the broker keeps re-checking (a fixed key needs a restart with the new setting)."""
    bad = {"KEEPA_API_KEY": "not a key!"}
    fleet.start_broker(env=bad)
    fleet.start_worker("w0", ROLES[0], env=bad)
    t0 = time.monotonic()
    wait_until(
        lambda: "key_invalid" in names(fleet),
        NAME_BOUND_S,
        interval=0.05,
        message=lambda: f"status naming key_invalid: {problems(fleet)}",
    )
    named_s = time.monotonic() - t0
    text = status_cli(fleet)
    assert "key invalid" in "\n".join(text.stdout.splitlines()[:3]), text.stdout
    check = status_cli(fleet, "--check")
    assert check.returncode == 1, (check.returncode, check.stdout, check.stderr)
    time.sleep(HOLD_S / 2)  # the fault lasts (observed: nothing granted meanwhile)
    st = fleet.status(timeout=5)
    assert st is not None and st["permits"]["granted"] == 0, st["permits"]
    broker_log = fleet.processes.log("broker")
    assert count(broker_log, "Keepa: key_invalid began") == 1, broker_log
    assert count(broker_log, r"Keepa /token failed") == 1, broker_log  # then said once
    assert st["keepa"]["sync_errors"] >= 2, st["keepa"]  # re-checked, not given up
    for w, text_ in worker_logs(fleet).items():
        assert "Traceback" not in text_, text_
        assert fleet.workers[w].poll() is None, text_
    return {"named_s": round(named_s, 2), "sync_errors": st["keepa"]["sync_errors"]}
