"""The killer's records and edges with real child processes: a zombie counts as gone, a
pid already gone or not ours to signal, several kills pending at once, the status view of
a kill. Written against the mutants that survived the first ``make mutate``
(docs/MUTATION.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from broker_net.test_killer import Recorder, start_of, target
from support import wait_until

from broker import states
from broker.killer import (
    EXITED,
    GRACE_OVER,
    KILL_MESSAGE,
    SIGKILLED,
    SIGNAL_FAILED,
    SIGTERM_SENT,
    Killer,
    KillRecord,
    process_gone,
)
from common import procinfo


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    made: list[subprocess.Popen[bytes]] = []
    try:
        yield made
    finally:
        for proc in made:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


def sleeper(children: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    children.append(proc)
    return proc


def test_a_zombie_is_gone_and_a_running_process_is_not(
    children: list[subprocess.Popen[bytes]],
) -> None:
    proc = sleeper(children)
    start = start_of(proc)
    assert not process_gone(proc.pid, start)
    os.kill(proc.pid, signal.SIGKILL)  # not reaped: a zombie until wait()
    wait_until(lambda: procinfo.process_state(proc.pid) == "Z", 10, message="a zombie")
    assert process_gone(proc.pid, start)
    proc.wait(timeout=10)
    assert process_gone(proc.pid, start)


def test_a_pid_that_vanished_before_the_signal_counts_as_signalled(
    children: list[subprocess.Popen[bytes]],
) -> None:
    proc = sleeper(children)

    def gone(pid: int, sig: int) -> None:
        raise ProcessLookupError(pid)

    killer = Killer(grace_s=1.0, send_kill=Recorder().send_kill, signal_fn=gone)
    record = killer.kill(target(proc.pid, start_of(proc)), states.KILL_SILENT, 0.0)
    assert record.action == SIGTERM_SENT and record.done_at is None
    assert killer.pending() == 1


def test_a_pid_we_may_not_signal_is_a_failed_kill_done_at_once(
    children: list[subprocess.Popen[bytes]],
) -> None:
    proc = sleeper(children)

    def denied(pid: int, sig: int) -> None:
        raise PermissionError(pid)

    killer = Killer(grace_s=1.0, send_kill=Recorder().send_kill, signal_fn=denied)
    record = killer.kill(target(proc.pid, start_of(proc)), states.KILL_STALLED, 5.0)
    assert (record.action, record.done_at) == (SIGNAL_FAILED, 5.0)
    assert killer.pending() == 0 and killer.next_deadline() is None
    assert dict(killer.by_action) == {SIGNAL_FAILED: 1}


def test_several_pending_kills_each_finish_at_their_own_time(
    children: list[subprocess.Popen[bytes]],
) -> None:
    rec = Recorder()
    killer = Killer(grace_s=2.0, send_kill=rec.send_kill, signal_fn=rec.signal)
    late, early = sleeper(children), sleeper(children)
    t_late = target(late.pid, start_of(late))
    t_early = target(early.pid, start_of(early))
    t_remote = target(4242, 1, same_host=False)
    r_late = killer.kill(t_late, states.KILL_SILENT, 5.0)  # first in, due last
    r_early = killer.kill(t_early, states.KILL_SILENT, 1.0)
    r_remote = killer.kill(t_remote, states.KILL_STALLED, 2.0)
    assert r_remote.action == KILL_MESSAGE and rec.kill_messages == [(b"ident", "stalled")]
    assert killer.next_deadline() == 3.0
    assert killer.tick(3.5) == [r_early]
    assert (r_early.outcome, r_early.done_at) == (SIGKILLED, 3.5)
    assert killer.tick(4.0) == [r_remote]
    assert (r_remote.outcome, r_remote.done_at) == (GRACE_OVER, 4.0)
    late.kill()
    late.wait(timeout=10)
    assert killer.tick(4.5) == [r_late]
    assert (r_late.outcome, r_late.done_at) == (EXITED, 4.5)
    assert killer.tick(10.0) == [] and killer.next_deadline() is None
    assert [r.worker for r in killer.history] == ["w1", "w1", "w1"]
    assert dict(killer.by_action) == {SIGTERM_SENT: 2, KILL_MESSAGE: 1}


def test_a_kill_record_in_status() -> None:
    record = KillRecord("w1", "w1@h:7:1", "silent", 100.0, 7, "h", SIGTERM_SENT, EXITED, 101.0)
    assert record.as_dict(now=110.5, wall_now=1_000_000.25) == {
        "worker": "w1",
        "reason": "silent",
        "at": 999_989.75,
        "age_s": 10.5,
        "pid": 7,
        "host": "h",
        "action": SIGTERM_SENT,
        "outcome": EXITED,
    }
    precise = KillRecord("w1", "k", "stalled", 0.12345, 7, "h", KILL_MESSAGE)
    shown = precise.as_dict(now=1.0, wall_now=50.0)
    assert shown["age_s"] == 0.877 and shown["at"] == 49.123
