"""The whole kill path of a silent or stalled worker, in one module.

1. **Detect** (``detect_and_kill``, from the broker core's housekeeping): the registry
   (``broker/registry.py``, ``Registry.check``) names the workers that are silent (nothing
   heard for ``liveness x heartbeat_s``) or stalled (heartbeats, but progress frozen for
   ``stall_s`` while not waiting on the broker). A ROLE_CLIENT peer is never signalled: it
   is only forgotten (``forget_client``). A worker's queued requests are cancelled, its
   record goes KILLING.
2. **Signal** (``Killer.kill``): same host — the pid is signalled only while its start time
   still matches the HELLO (``common.procinfo.same_process``), so a pid reused by another
   process is never signalled; SIGTERM then SIGCONT (a stopped process can only act on the
   SIGTERM once continued). Another host — a ``KILL`` message (``kill_message``: the frames
   ``[identity, KILL(reason)]``) to the worker's socket. The worker's link
   (``workers/link.py``, ``handle_kill``) obeys it only from the broker that welcomed
   this connection: best-effort BYE, then ``on_kill``, where the runtime
   (``workers/runtime.py``) exits the process.
3. **Confirm** (``Killer.tick``): a same-host process that exited (or is a zombie) is done;
   after ``kill_grace_s``, SIGKILL if that same process is still there (the start time is
   checked again first); another host: the grace running out ends the wait.
4. **Gone** (``finish_kills``): the registry marks the record GONE with the reason and the
   outcome; it stays visible in status a while, then is purged.

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
from typing import TYPE_CHECKING, Any, Protocol

from broker import states
from common import procinfo, protocol

if TYPE_CHECKING:
    from broker.permits import PermitBook
    from broker.registry import Registry, WorkerRecord

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


# --- the path, as the broker core drives it -----------------------------------------------


def kill_message(target: KillTarget, reason: str) -> list[bytes]:
    """The frames that tell a worker on another host to die (its link obeys only these,
    from the broker it is connected to)."""
    return [target.identity, protocol.Kill(reason).encode()]


def detect_and_kill(killer: Killer, registry: Registry, permits: PermitBook, now: float) -> None:
    """Step 1 and 2: kill (or forget) every worker the registry finds silent or stalled."""

    def queued(key: str) -> bool:
        return permits.queued_for(key) > 0

    for rec, reason in registry.check(now, queued):
        kill(killer, registry, permits, rec, reason, now)


def kill(
    killer: Killer,
    registry: Registry,
    permits: PermitBook,
    rec: WorkerRecord,
    reason: str,
    now: float,
) -> None:
    if rec.role == protocol.ROLE_CLIENT:
        forget_client(registry, permits, rec, reason, now)
        return
    if reason == states.KILL_SILENT:
        why = f"silent for {now - rec.last_seen:.1f} s"
    else:
        why = f"progress frozen at {rec.progress} for {now - rec.progress_at:.1f} s"
    log.warning("worker %s (pid %d on %s) is %s: %s", rec.worker_id, rec.pid, rec.host, reason, why)
    permits.drop_worker(rec.key, now)
    registry.mark_killing(rec, now)
    record = killer.kill(rec, reason, now)
    if record.done_at is not None:
        registry.mark_gone(rec, now, f"not killed ({record.action})")


def forget_client(
    registry: Registry, permits: PermitBook, rec: WorkerRecord, reason: str, now: float
) -> None:
    """A client program (ROLE_CLIENT) fell silent: never signalled (it is the user's
    process), only forgotten. Its queued requests are cancelled; its granted permits
    stay in flight until settled or their lease expires."""
    log.warning(
        "client %s (pid %d on %s) is %s for %.1f s: forgotten, not killed",
        rec.worker_id,
        rec.pid,
        rec.host,
        reason,
        now - rec.last_seen,
    )
    permits.drop_worker(rec.key, now)
    registry.mark_gone(rec, now, f"client {reason}")


def finish_kills(killer: Killer, registry: Registry, now: float) -> None:
    """Step 3 and 4: the kills whose process went away (or whose grace ran out) are GONE."""
    for record in killer.tick(now):
        rec = registry.by_key(record.key)
        if rec is not None and rec.state == states.KILLING:
            registry.mark_gone(rec, now, f"killed ({record.reason}, {record.outcome})")
