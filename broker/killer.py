"""Killing silent and stalled workers, safely.

Same host (the worker's HELLO named this host): the pid is signalled only while its start
time still matches the HELLO (``common.procinfo.same_process``) — a pid reused by another
process is never signalled. SIGTERM then SIGCONT (a stopped process can only act on the
SIGTERM once continued); after ``kill_grace_s``, SIGKILL if that same process is still there
(the start time is checked again first). Another host: a ``KILL`` message to the worker's
socket (the broker sends it through the ``send_kill`` callback).

Every kill is recorded with its reason and what was done; the history is bounded.

Actions recorded (status ``kills[].action``):

========================  ==================================================================
``sigterm``               SIGTERM + SIGCONT sent; SIGKILL follows after the grace if needed
``kill_message``          KILL sent to a worker on another host
``skipped_pid_mismatch``  the pid now belongs to another process (or none): not signalled
``skipped_unsafe_pid``    pid 1, or the broker's own pid: never signalled
``signal_failed``         the signal could not be sent (permission)
========================  ==================================================================
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import signal
from collections.abc import Callable
from typing import Any, Protocol

from common import procinfo

log = logging.getLogger(__name__)

MAX_KILLS_KEPT = 200

SIGTERM_SENT = "sigterm"
KILL_MESSAGE = "kill_message"
SKIPPED_PID_MISMATCH = "skipped_pid_mismatch"
SKIPPED_UNSAFE_PID = "skipped_unsafe_pid"
SIGNAL_FAILED = "signal_failed"

# Outcomes of a pending kill.
EXITED = "exited"
SIGKILLED = "sigkilled"
GRACE_OVER = "grace_over"  # another host: we cannot watch the process, we stop waiting


class KillTarget(Protocol):
    """What the killer needs to know about a worker (the registry's ``WorkerRecord`` is
    one: the broker passes its record as it is)."""

    worker_id: str
    key: str
    identity: bytes
    host: str
    pid: int
    start_time: int
    same_host: bool


@dataclasses.dataclass
class KillRecord:
    worker: str
    key: str
    reason: str
    at: float  # the broker's clock (monotonic)
    pid: int
    host: str
    action: str
    outcome: str = ""
    done_at: float | None = None

    def as_dict(self, now: float, wall_now: float) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "reason": self.reason,
            "at": round(wall_now - (now - self.at), 3),
            "age_s": round(now - self.at, 3),
            "pid": self.pid,
            "host": self.host,
            "action": self.action,
            "outcome": self.outcome,
        }


@dataclasses.dataclass
class _Pending:
    target: KillTarget
    record: KillRecord
    deadline: float


def process_gone(pid: int, start_time: int) -> bool:
    """True when ``pid`` is no longer the process that started at ``start_time`` (a zombie
    counts as gone: it only waits for its parent to reap it)."""
    if not procinfo.same_process(pid, start_time):
        return True
    return procinfo.process_state(pid) in (None, "Z", "X")


class Killer:
    """Kills workers and watches them go. ``tick(now)`` reports the kills that finished."""

    def __init__(
        self,
        *,
        grace_s: float,
        send_kill: Callable[[KillTarget, str], None],
        signal_fn: Callable[[int, int], None] = os.kill,
        own_pid: int | None = None,
    ) -> None:
        self.grace_s = grace_s
        self._send_kill = send_kill
        self._signal = signal_fn
        self._own_pid = os.getpid() if own_pid is None else own_pid
        self._pending: dict[str, _Pending] = {}
        self.history: collections.deque[KillRecord] = collections.deque(maxlen=MAX_KILLS_KEPT)
        self.by_reason: collections.Counter[str] = collections.Counter()
        self.by_action: collections.Counter[str] = collections.Counter()

    def kill(self, target: KillTarget, reason: str, now: float) -> KillRecord:
        """Kill ``target`` for ``reason``. Returns the record; ``record.done_at`` is set when
        nothing is left to wait for (skipped, or a signal failed)."""
        record = KillRecord(
            worker=target.worker_id,
            key=target.key,
            reason=reason,
            at=now,
            pid=target.pid,
            host=target.host,
            action="",
        )
        if target.same_host:
            record.action = self._signal_term(target, reason)
        else:
            self._send_kill(target, reason)
            record.action = KILL_MESSAGE
            log.warning(
                "killing worker %s on %s (%s): KILL message sent",
                target.worker_id,
                target.host,
                reason,
            )
        self.history.append(record)
        self.by_reason[reason] += 1
        self.by_action[record.action] += 1
        if record.action in (SIGTERM_SENT, KILL_MESSAGE):
            self._pending[target.key] = _Pending(target, record, now + self.grace_s)
        else:
            record.done_at = now
        return record

    def tick(self, now: float) -> list[KillRecord]:
        """Finish the kills whose process went away or whose grace ran out."""
        done: list[KillRecord] = []
        for key, pending in list(self._pending.items()):
            target, record = pending.target, pending.record
            # Checked right before any SIGKILL below: never SIGKILL a reused pid.
            if target.same_host and process_gone(target.pid, target.start_time):
                record.outcome = EXITED
                log.info("worker %s (pid %d) is gone", target.worker_id, target.pid)
            elif now < pending.deadline:
                continue
            elif target.same_host:
                record.outcome = SIGKILLED
                log.warning(
                    "worker %s (pid %d) still there %.1f s after SIGTERM: SIGKILL",
                    target.worker_id,
                    target.pid,
                    self.grace_s,
                )
                self._try_signal(target.pid, signal.SIGKILL)
            else:
                record.outcome = GRACE_OVER
            record.done_at = now
            del self._pending[key]
            done.append(record)
        return done

    def next_deadline(self) -> float | None:
        """When ``tick`` must run next (None: nothing pending). Same-host kills are also
        checked on every loop turn, so a process that exits early is noticed soon."""
        return min((p.deadline for p in self._pending.values()), default=None)

    def pending(self) -> int:
        return len(self._pending)

    # --- internals ----------------------------------------------------------------------

    def _signal_term(self, target: KillTarget, reason: str) -> str:
        pid = target.pid
        if pid <= 1 or pid == self._own_pid:
            log.error("not killing worker %s: pid %d is not safe to signal", target.worker_id, pid)
            return SKIPPED_UNSAFE_PID
        actual = procinfo.process_start_time(pid)
        if actual != target.start_time:  # (procinfo.same_process, read once for the log)
            log.warning(
                "not killing worker %s (%s): pid %d %s (HELLO said start time %d); "
                "marked gone without a signal",
                target.worker_id,
                reason,
                pid,
                "no longer exists" if actual is None else f"now has start time {actual}",
                target.start_time,
            )
            return SKIPPED_PID_MISMATCH
        log.warning(
            "killing worker %s (pid %d, %s): SIGTERM, SIGKILL in %.1f s if still there",
            target.worker_id,
            pid,
            reason,
            self.grace_s,
        )
        if not self._try_signal(pid, signal.SIGTERM):
            return SIGNAL_FAILED
        self._try_signal(pid, signal.SIGCONT)  # a SIGSTOPped process must run to die
        return SIGTERM_SENT

    def _try_signal(self, pid: int, sig: int) -> bool:
        try:
            self._signal(pid, sig)
        except ProcessLookupError:
            return True  # already gone: as good as done
        except PermissionError as exc:
            log.error("cannot signal pid %d: %s", pid, exc)
            return False
        return True
