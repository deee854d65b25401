"""The killer with a recording signal function and real child processes for the start-time
check: it signals only the process that said HELLO, SIGKILLs after the grace, never signals a
reused pid, pid 1 or itself, and sends KILL to workers on other hosts."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from broker import states
from broker.killer import (
    EXITED,
    GRACE_OVER,
    KILL_MESSAGE,
    SIGKILLED,
    SIGTERM_SENT,
    SKIPPED_PID_MISMATCH,
    SKIPPED_UNSAFE_PID,
    Killer,
    KillTarget,
)
from common import procinfo


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


@dataclasses.dataclass
class Target:
    """A ``KillTarget`` (the broker passes its ``WorkerRecord``)."""

    worker_id: str
    key: str
    identity: bytes
    host: str
    pid: int
    start_time: int
    same_host: bool


def target(pid: int, start: int, same_host: bool = True) -> KillTarget:
    return Target("w1", f"w1@h:{pid}:{start}", b"ident", "h", pid, start, same_host)


class Recorder:
    def __init__(self) -> None:
        self.signals: list[tuple[int, int]] = []
        self.kill_messages: list[tuple[bytes, str]] = []

    def signal(self, pid: int, sig: int) -> None:
        self.signals.append((pid, sig))

    def send_kill(self, t: KillTarget, reason: str) -> None:
        self.kill_messages.append((t.identity, reason))


def start_of(proc: subprocess.Popen[bytes]) -> int:
    start = procinfo.process_start_time(proc.pid)
    assert start is not None
    return start


def make(rec: Recorder, grace_s: float = 2.0) -> Killer:
    return Killer(grace_s=grace_s, send_kill=rec.send_kill, signal_fn=rec.signal)


def test_sigterm_sigcont_then_sigkill_after_the_grace(child: subprocess.Popen[bytes]) -> None:
    rec = Recorder()
    killer = make(rec)
    start = start_of(child)
    record = killer.kill(target(child.pid, start), states.KILL_SILENT, now=10.0)
    assert record.action == SIGTERM_SENT
    assert rec.signals == [(child.pid, signal.SIGTERM), (child.pid, signal.SIGCONT)]
    assert killer.next_deadline() == pytest.approx(12.0)
    assert killer.tick(11.9) == []  # (the recorder did not really signal: still there)
    done = killer.tick(12.0)
    assert done == [record] and record.outcome == SIGKILLED
    assert rec.signals[-1] == (child.pid, signal.SIGKILL)
    assert killer.pending() == 0
    assert dict(killer.by_reason) == {states.KILL_SILENT: 1}


def test_a_process_that_exits_is_not_sigkilled(child: subprocess.Popen[bytes]) -> None:
    rec = Recorder()
    killer = make(rec)
    start = start_of(child)
    record = killer.kill(target(child.pid, start), states.KILL_STALLED, now=0.0)
    child.kill()
    child.wait(timeout=10)
    assert killer.tick(0.1) == [record]
    assert record.outcome == EXITED
    assert signal.SIGKILL not in [s for _, s in rec.signals]


def test_a_reused_pid_is_never_signalled(child: subprocess.Popen[bytes]) -> None:
    rec = Recorder()
    killer = make(rec)
    start = start_of(child)
    record = killer.kill(target(child.pid, start + 1), states.KILL_SILENT, now=0.0)
    assert record.action == SKIPPED_PID_MISMATCH
    assert record.done_at == 0.0
    assert rec.signals == []
    assert killer.pending() == 0
    assert child.poll() is None


def test_a_vanished_pid_is_not_signalled() -> None:
    rec = Recorder()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    start = procinfo.process_start_time(proc.pid) or 1
    proc.wait(timeout=10)
    record = make(rec).kill(target(proc.pid, start), states.KILL_SILENT, now=0.0)
    assert record.action == SKIPPED_PID_MISMATCH
    assert rec.signals == []


@pytest.mark.parametrize("pid", [1, os.getpid()])
def test_pid_1_and_own_pid_are_never_signalled(pid: int) -> None:
    rec = Recorder()
    start = procinfo.process_start_time(pid) or 0
    record = make(rec).kill(target(pid, start), states.KILL_SILENT, now=0.0)
    assert record.action == SKIPPED_UNSAFE_PID
    assert rec.signals == []


def test_another_host_gets_a_kill_message() -> None:
    rec = Recorder()
    killer = make(rec, grace_s=1.0)
    record = killer.kill(target(12345, 1, same_host=False), states.KILL_STALLED, now=0.0)
    assert record.action == KILL_MESSAGE
    assert rec.kill_messages == [(b"ident", states.KILL_STALLED)]
    assert rec.signals == []
    assert killer.tick(0.5) == []
    assert killer.tick(1.0) == [record] and record.outcome == GRACE_OVER


def test_the_history_is_bounded() -> None:
    rec = Recorder()
    killer = make(rec)
    for i in range(1000):
        killer.kill(Target(f"w{i}", f"k{i}", b"x", "h", 5, 1, False), states.KILL_SILENT, float(i))
        killer.tick(float(i) + 5)
    assert len(killer.history) <= 200
    assert killer.by_reason[states.KILL_SILENT] == 1000


def test_a_pid_reused_during_the_grace_is_not_sigkilled(
    child: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM went to the right process; before the grace ran out the pid came to belong to
    another process (its start time differs; the pid itself is still running). The re-check
    before SIGKILL sees it: the kill ends as ``exited`` and no SIGKILL is sent."""
    rec = Recorder()
    killer = make(rec)
    start = start_of(child)
    record = killer.kill(target(child.pid, start), states.KILL_SILENT, now=0.0)
    assert record.action == SIGTERM_SENT
    real = procinfo.process_start_time

    def reused(pid: int) -> int | None:  # /proc/<pid>/stat of the new process: later start
        actual = real(pid)
        return actual + 1 if pid == child.pid and actual is not None else actual

    monkeypatch.setattr(procinfo, "process_start_time", reused)
    assert procinfo.process_state(child.pid) not in (None, "Z", "X")  # the pid is alive
    assert killer.tick(5.0) == [record]  # past the grace
    assert record.outcome == EXITED
    assert signal.SIGKILL not in [s for _, s in rec.signals]
    assert child.poll() is None
