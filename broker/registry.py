"""The worker registry: who said HELLO, when each was last heard from, its progress.

Pure bookkeeping with ``now`` passed in: no sockets, no signals. The broker's loop asks it
which workers are due a heartbeat, which are silent (nothing heard for ``liveness x
heartbeat_s``) and which are stalled (heartbeats arrive but the progress counter has been
frozen for ``stall_s`` while the worker is not waiting on the broker), and acts on the answer.

Worker lifecycle (see ``broker/states.py``)::

    ALIVE -> WAITING        it has a request queued at the broker
    WAITING -> ALIVE        granted, rejected or cancelled
    ALIVE -> STALLED        progress frozen for stall_s while not waiting
    ALIVE|WAITING -> SILENT nothing heard for liveness x heartbeat_s
    SILENT|STALLED -> KILLING   the killer acted
    KILLING -> GONE         the process is gone (or the grace ran out)
    any -> GONE             BYE, or another process took over its worker id

Everything kept per worker is bounded: free-form ``info`` dicts are cut to a few levels,
keys, items and characters; GONE records are kept a while for status, then purged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any

from broker import states
from common import protocol
from common.errors import ProtocolError
from common.lifecycle import transition
from common.protocol import ErrorCode

log = logging.getLogger(__name__)

# GONE records stay visible in status this long, and at most this many of them.
GONE_KEEP_S = 600.0
# The registry's timers (silence, stall, heartbeats to send) are checked by scanning every
# worker. Scanning on every loop turn cost 23 % of a core at 500 workers (one turn per
# heartbeat received); a scan at most every SCAN_EVERY_S (or a quarter heartbeat when that is
# shorter) is as good for timers measured in heartbeats and costs a fraction of that.
SCAN_EVERY_S = 0.1
MAX_GONE_KEPT = 100
# Bounds of what a HELLO may carry and of the info dict kept from heartbeats.
MAX_ID_CHARS = 128
MAX_HOST_CHARS = 255
MAX_LABEL_CHARS = 64
MAX_PID = 2**31 - 1
MAX_INFO_DEPTH = 4
MAX_INFO_KEYS = 64
MAX_INFO_ITEMS = 64
MAX_INFO_STR_CHARS = 256
MAX_INFO_BYTES = 16 * 1024  # an info dict larger than this (as JSON) is not kept

LIVE_STATES = (states.ALIVE, states.WAITING, states.STALLED, states.SILENT)


@dataclasses.dataclass(eq=False)
class WorkerRecord:
    """One registered worker process, as the broker sees it."""

    worker_id: str
    # The permit book's name for this registration: one per (worker id, host, pid, start
    # time), so a new process reusing a worker id never inherits the old one's (worker, seq)
    # answers.
    key: str
    identity: bytes
    host: str
    pid: int
    start_time: int
    role: str
    version: str
    same_host: bool
    registered_at: float
    last_seen: float  # any message from it
    last_sent: float  # any message to it
    progress_at: float  # when progress last changed, or the worker last waited
    state: str = states.ALIVE
    state_since: float = 0.0
    progress: int = 0
    waiting: bool = False  # its latest heartbeat said its work loop waits on the broker
    stage: str = ""
    items_done: int = 0
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    tokens_spent: int = 0
    settles: int = 0
    heartbeats: int = 0
    gone_reason: str = ""
    # Permits delivered to it and when it last settled a call (shown for clients).
    grants: int = 0
    last_call_at: float | None = None

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    def set_state(self, state: str, now: float) -> None:
        transition(states.WORKER, self, state, logger=log, subject=self.worker_id, now=now)


def session_key(hello: protocol.Hello) -> str:
    """The permit book's name for one registration of one process."""
    return f"{hello.worker_id}@{hello.host}:{hello.pid}:{hello.start_time}"


def check_hello(hello: protocol.Hello) -> None:
    """Refuse a HELLO whose fields make no sense (ProtocolError "bad_hello")."""
    problems = []
    if not hello.worker_id or len(hello.worker_id) > MAX_ID_CHARS:
        problems.append(f"worker_id must be 1..{MAX_ID_CHARS} characters")
    elif not hello.worker_id.isprintable():
        problems.append("worker_id has unprintable characters")
    if not 0 < hello.pid <= MAX_PID:
        problems.append(f"pid {hello.pid} out of range")
    if not 0 <= hello.start_time < 2**63:
        problems.append("start_time out of range")
    if len(hello.host) > MAX_HOST_CHARS or not hello.host.isprintable():
        problems.append("bad host")
    if len(hello.role) > MAX_LABEL_CHARS or len(hello.version) > MAX_LABEL_CHARS:
        problems.append(f"role and version are at most {MAX_LABEL_CHARS} characters")
    if problems:
        raise ProtocolError(ErrorCode.BAD_HELLO, "; ".join(problems))


def bounded(value: Any, depth: int = MAX_INFO_DEPTH) -> Any:
    """A copy of ``value`` cut to a few levels, keys, items and characters, JSON-friendly."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value[:MAX_INFO_STR_CHARS]
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value[:MAX_INFO_STR_CHARS]).hex()
    if depth <= 0:
        return "..."
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for i, (k, v) in enumerate(value.items()):
            if i >= MAX_INFO_KEYS:
                out["..."] = f"{len(value) - MAX_INFO_KEYS} more keys"
                break
            out[str(k)[:MAX_INFO_STR_CHARS]] = bounded(v, depth - 1)
        return out
    if isinstance(value, list | tuple):
        return [bounded(v, depth - 1) for v in list(value)[:MAX_INFO_ITEMS]]
    return str(value)[:MAX_INFO_STR_CHARS]


class Registry:
    """Registered workers by ROUTER identity and by worker id."""

    def __init__(
        self,
        *,
        heartbeat_s: float,
        liveness: int,
        stall_s: float,
        max_workers: int,
        this_host: str,
    ) -> None:
        self.heartbeat_s = heartbeat_s
        self.silent_after_s = heartbeat_s * liveness
        self.stall_s = stall_s
        self.max_workers = max_workers
        self.this_host = this_host
        self._by_identity: dict[bytes, WorkerRecord] = {}
        self._by_id: dict[str, WorkerRecord] = {}  # the current registration of each id
        self._by_key: dict[str, WorkerRecord] = {}
        self._gone: list[WorkerRecord] = []  # oldest first
        self.scan_every_s = min(SCAN_EVERY_S, heartbeat_s / 4)
        self._next_scan_at = float("-inf")
        # next_deadline() walks every worker; its answer is kept until something could make
        # a timer earlier (a scan, a registration, a state change). A heartbeat or a send
        # only moves timers later, so a kept answer errs early: one extra wake, never a miss.
        self._deadline: float | None = None
        self._deadline_stale = True

    def scan_due(self, now: float) -> bool:
        """True (and the next scan scheduled) when the timers may be scanned at ``now``."""
        if now < self._next_scan_at:
            return False
        self._next_scan_at = now + self.scan_every_s
        self._deadline_stale = True
        return True

    # --- queries ------------------------------------------------------------------------

    def by_identity(self, identity: bytes) -> WorkerRecord | None:
        return self._by_identity.get(identity)

    def by_key(self, key: str) -> WorkerRecord | None:
        """The current registration whose permit-book key is ``key`` (None once gone)."""
        return self._by_key.get(key)

    def live(self) -> list[WorkerRecord]:
        return [r for r in self._by_id.values() if r.live]

    def live_count(self) -> int:
        return sum(1 for r in self._by_id.values() if r.live)

    def records(self) -> list[WorkerRecord]:
        """Every record, current registrations first (by id), then the recently gone."""
        current = sorted(self._by_id.values(), key=lambda r: r.worker_id)
        return current + list(reversed(self._gone))

    def counts_by_state(self) -> dict[str, int]:
        counts = dict.fromkeys(states.WORKER_STATES, 0)
        for rec in self.records():
            counts[rec.state] = counts.get(rec.state, 0) + 1
        return counts

    # --- registration -------------------------------------------------------------------

    def hello(
        self, identity: bytes, hello: protocol.Hello, now: float
    ) -> tuple[WorkerRecord, WorkerRecord | None]:
        """Register (or re-register) the sender. Returns the record and the registration it
        replaced, if another process (or another registration) held that worker id."""
        check_hello(hello)
        self._deadline_stale = True  # a new or revived record brings its timers
        key = session_key(hello)
        old = self._by_id.get(hello.worker_id)
        at_identity = self._by_identity.get(identity)
        if at_identity is not None and at_identity is not old and at_identity.live:
            # The same socket now speaks for another worker id: the old registration ends.
            self._end(at_identity, now, "identity reused")
        if old is not None and old.key == key and old.state != states.GONE:
            # The same process again (a reconnect, or after a DISCONNECT): keep its history.
            if old.identity != identity:
                self._by_identity.pop(old.identity, None)
                old.identity = identity
            self._by_identity[identity] = old
            old.last_seen = now
            old.progress_at = now
            old.set_state(states.ALIVE, now)  # SILENT|STALLED|KILLING -> ALIVE (it is back)
            return old, None
        replaced = None
        if old is not None and old.state != states.GONE:
            replaced = old
            self._end(old, now, "replaced by a new registration")
        if self.live_count() >= self.max_workers:
            raise ProtocolError(
                ErrorCode.TOO_MANY_WORKERS,
                f"{self.max_workers} workers registered (broker.max_workers)",
            )
        rec = WorkerRecord(
            worker_id=hello.worker_id,
            key=key,
            identity=identity,
            host=hello.host,
            pid=hello.pid,
            start_time=hello.start_time,
            role=hello.role,
            version=hello.version,
            same_host=hello.host == self.this_host,
            registered_at=now,
            last_seen=now,
            last_sent=now,
            progress_at=now,
            state_since=now,
        )
        self._by_id[hello.worker_id] = rec
        self._by_key[key] = rec
        self._by_identity[identity] = rec
        return rec, replaced

    def heard_from(self, rec: WorkerRecord, now: float) -> None:
        rec.last_seen = now

    def sent_to(self, rec: WorkerRecord, now: float) -> None:
        rec.last_sent = now

    def heartbeat(self, rec: WorkerRecord, hb: protocol.Heartbeat, now: float) -> None:
        rec.last_seen = now
        rec.heartbeats += 1
        if hb.progress != rec.progress:
            rec.progress = hb.progress
            rec.progress_at = now
        if hb.waiting != rec.waiting:
            self._deadline_stale = True  # the stall timer starts or stops
        rec.waiting = hb.waiting
        if hb.waiting:
            rec.progress_at = now  # waiting on the broker is not a stall
        rec.stage = hb.stage[:MAX_LABEL_CHARS]
        rec.items_done = hb.items_done
        if hb.info:
            info = bounded(hb.info)
            if len(json.dumps(info, default=str)) <= MAX_INFO_BYTES:
                rec.info = info
            else:
                rec.info = {"dropped": f"info larger than {MAX_INFO_BYTES} bytes"}
        if rec.state == states.STALLED and rec.progress_at == now:
            rec.set_state(states.ALIVE, now)  # STALLED -> ALIVE (progress again)
            self._deadline_stale = True

    def set_queued(self, rec: WorkerRecord, queued: bool, now: float) -> None:
        """Whether the worker has a request queued at the broker (WAITING)."""
        if queued:
            rec.progress_at = now
            if rec.state == states.ALIVE:
                rec.set_state(states.WAITING, now)  # ALIVE -> WAITING
        elif rec.state == states.WAITING:
            rec.set_state(states.ALIVE, now)  # WAITING -> ALIVE
            self._deadline_stale = True  # the stall timer starts

    def bye(self, rec: WorkerRecord, now: float, reason: str) -> None:
        self._end(rec, now, f"bye: {reason}" if reason else "bye")

    def mark_killing(self, rec: WorkerRecord, now: float) -> None:
        rec.set_state(states.KILLING, now)  # SILENT|STALLED -> KILLING

    def mark_gone(self, rec: WorkerRecord, now: float, reason: str) -> None:
        self._end(rec, now, reason)

    # --- timers -------------------------------------------------------------------------

    def check(self, now: float, queued: Callable[[str], bool]) -> list[tuple[WorkerRecord, str]]:
        """Find the workers that became silent or stalled: ``[(record, kill reason)]``."""
        out: list[tuple[WorkerRecord, str]] = []
        for rec in list(self._by_id.values()):
            if rec.state not in (states.ALIVE, states.WAITING):
                continue
            is_queued = queued(rec.key)
            self.set_queued(rec, is_queued, now)
            if now - rec.last_seen >= self.silent_after_s:
                rec.set_state(states.SILENT, now)  # ALIVE|WAITING -> SILENT
                out.append((rec, states.KILL_SILENT))
            elif rec.role == protocol.ROLE_CLIENT:
                continue  # a client program idles as it likes: never stalled
            elif not is_queued and not rec.waiting and now - rec.progress_at >= self.stall_s:
                rec.set_state(states.STALLED, now)  # ALIVE -> STALLED
                out.append((rec, states.KILL_STALLED))
        return out

    def heartbeats_due(self, now: float) -> list[WorkerRecord]:
        """Live workers the broker has sent nothing to for a heartbeat interval."""
        return [
            r
            for r in self._by_id.values()
            if r.state in (states.ALIVE, states.WAITING, states.STALLED)
            and now - r.last_sent >= self.heartbeat_s
        ]

    @property
    def deadline_stale(self) -> bool:
        """Whether something happened since next_deadline() last answered that could make
        a timer earlier than that answer."""
        return self._deadline_stale

    def next_deadline(self) -> float | None:
        """The earliest instant at which a heartbeat, a silence or a stall falls due."""
        if self._deadline_stale:
            self._deadline = self._earliest_timer()
            self._deadline_stale = False
        if self._deadline is None:
            return None
        # Never earlier than the next scan: a timer due before it waits for that scan.
        return max(self._deadline, self._next_scan_at)

    def _earliest_timer(self) -> float | None:
        times = []
        for r in self._by_id.values():
            if r.state in (states.ALIVE, states.WAITING, states.STALLED):
                times.append(r.last_sent + self.heartbeat_s)
            if r.state in (states.ALIVE, states.WAITING):
                times.append(r.last_seen + self.silent_after_s)
                if r.state == states.ALIVE and not r.waiting and r.role != protocol.ROLE_CLIENT:
                    times.append(r.progress_at + self.stall_s)
        return min(times) if times else None

    def purge(self, now: float) -> None:
        """Forget GONE records kept long enough (and the oldest beyond MAX_GONE_KEPT)."""
        keep = [r for r in self._gone if now - r.state_since < GONE_KEEP_S]
        self._gone = keep[-MAX_GONE_KEPT:]

    # --- internals ----------------------------------------------------------------------

    def _end(self, rec: WorkerRecord, now: float, reason: str) -> None:
        if rec.state != states.GONE:
            rec.set_state(states.GONE, now)  # any -> GONE
            rec.gone_reason = reason
        if self._by_identity.get(rec.identity) is rec:
            del self._by_identity[rec.identity]
        if self._by_id.get(rec.worker_id) is rec:
            del self._by_id[rec.worker_id]
        if self._by_key.get(rec.key) is rec:
            del self._by_key[rec.key]
        self._remember_gone(rec)

    def _remember_gone(self, rec: WorkerRecord) -> None:
        if rec not in self._gone:
            self._gone.append(rec)
            if len(self._gone) > MAX_GONE_KEPT:
                del self._gone[0]
