"""No token is spent on work that cannot be kept: the worker's storage gate.

Two parts, both owned by the work loop's thread:

* ``StorageGate`` knows whether this worker can write. Before the permit client asks for a
  permit (``ready``) it wants proof: a successful write within ``FRESH_S``, else a cheap
  probe (one upsert into ``state``). While it is *blocked* — a write failed on the storage
  itself (``common.storage_health``: disk full, read-only, I/O error, locked past the busy
  timeout, PostgreSQL unreachable) — ``ready`` raises ``StorageBlocked``: no permit is
  asked for, so no token is spent. The work loop calls ``recover(now)`` before each turn
  while blocked: it writes what is held, oldest first, with a backoff doubling from
  ``RETRY_MIN_S`` to ``RETRY_MAX_S`` (well under the broker's stall limit: every retry is a
  turn of the loop), and unblocks by itself when every held write has landed.
* ``GatedStorage`` wraps the worker's ``Storage``. The writes that carry what a Keepa call
  paid for (``HELD_WRITES``: rejections, deals, refreshed or dropped deals, new candidates,
  learned costs, query counters), when made outside a transaction, go through the gate: if
  one fails on the storage, the write itself (its arguments, in memory) is *held* and the
  call returns as if it had succeeded, so the stage goes on with its batch — until its next
  Keepa call, which the gate refuses. Every such write is an idempotent upsert (see
  ``common.storage``), so writing it later, even after the claim expired and another worker
  took the ASIN, leaves the rows it would have left. At most ``MAX_HELD`` writes are held
  (a batch makes a few); past that the oldest is dropped with an error line.

The worker tells the broker: the heartbeat's ``storage`` field (``problem``, ``since_s``,
``held``, ``detail``), and says it in its log once when it begins and once when it ends
(``common.say_once``).

Test-only fault (off unless set): ``FLEET_WORKER_STORAGE_FAULT=<file>``. While the file
says ``full`` the SQLite connection gets ``PRAGMA max_page_count`` = its page count (writes
that need a new page fail with SQLITE_FULL, as on a full disk); ``readonly``:
``PRAGMA query_only`` (SQLITE_READONLY, as a read-only file or directory); no file: both
lifted. The fault suite (``tests/faults``) uses it; never set it in production.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from common.errors import StorageBlocked
from common.say_once import SayOnce
from common.storage_health import classify, describe

if TYPE_CHECKING:
    from common.storage import Storage

log = logging.getLogger(__name__)

FRESH_S = 10.0  # a successful write this recent proves the storage writable
RETRY_MIN_S = 0.25
RETRY_MAX_S = 2.0
MAX_HELD = 64  # writes held in memory at most (one batch holds a few)
PROBE_KEY = "storage_probe"
HELD_WRITES = {
    # method: what it returns when held (as if written)
    "reject_candidates": lambda args: len(args[1]),
    "commit_deals": lambda args: len(args[1]),
    "refresh_deals": lambda args: len(args[1]),
    "drop_deals": lambda args: len(args[1]),
    "add_candidates": lambda args: 0,
    "set_state": lambda args: None,
    "add_query_counter": lambda args: None,
}
FAULT_ENV = "FLEET_WORKER_STORAGE_FAULT"
NO_PAGE_LIMIT = 1_073_741_823


@dataclasses.dataclass
class Held:
    what: str
    write: Callable[[], Any]
    since: float


class StorageGate:
    def __init__(
        self,
        storage: Any,
        *,
        report: Callable[[dict[str, Any]], None] = lambda storage: None,
        clock: Callable[[], float] = time.time,
        fresh_s: float = FRESH_S,
        retry_min_s: float = RETRY_MIN_S,
        retry_max_s: float = RETRY_MAX_S,
        max_held: int = MAX_HELD,
        fault_file: str | None = None,
    ) -> None:
        self.storage = storage
        self._report = report
        self.clock = clock
        self.fresh_s = fresh_s
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.max_held = max_held
        self.held: collections.deque[Held] = collections.deque()
        self.problem: str | None = None
        self.since: float | None = None
        self.detail = ""
        self.last_ok_at: float | None = None
        self.retry_at = 0.0
        self._retry_wait_s = 0.0
        self.dropped = 0
        self._say = SayOnce(log, "storage")
        self._fault_file = fault_file if fault_file is not None else os.environ.get(FAULT_ENV)
        self._fault_mode = ""

    @property
    def blocked(self) -> bool:
        return self.problem is not None or bool(self.held)

    # --- before a permit ----------------------------------------------------------------

    def ready(self, now: float | None = None) -> None:
        """Raise StorageBlocked unless this worker is known to be able to write."""
        now = self.clock() if now is None else now
        self.apply_fault()
        if self.blocked:
            raise StorageBlocked(
                self.problem or "held", f"{len(self.held)} results held; no permit asked"
            )
        if self.last_ok_at is not None and now - self.last_ok_at < self.fresh_s:
            return
        if not self._attempt(now, "probe", self._probe):
            raise StorageBlocked(str(self.problem), "the probe write failed; no permit asked")

    # --- the work loop, while blocked ---------------------------------------------------

    def recover(self, now: float) -> bool:
        """Write what is held (then probe if nothing was), when the backoff allows. True
        when the storage works again (unblocked)."""
        if not self.blocked:
            return True
        if now < self.retry_at:
            return False
        self.apply_fault()
        while self.held:
            item = self.held[0]
            if not self._attempt(now, item.what, item.write):
                return False
            self.held.popleft()
        return self.problem is None or self._attempt(now, "probe", self._probe)

    def retry_in_s(self, now: float) -> float:
        return max(0.0, self.retry_at - now)

    def failed(self, exc: BaseException, now: float) -> bool:
        """A write outside the gate (a claim, a release) raised ``exc``: True when it is a
        storage problem (the gate is blocked now), False when it is not one."""
        if isinstance(exc, StorageBlocked):
            return True  # raised by ready(): the gate knows already
        problem = storage_problem(exc)
        if problem is None:
            return False
        self._failed(problem, exc, now)
        return True

    # --- the writes ---------------------------------------------------------------------

    def write(self, what: str, fn: Callable[[], Any], held_result: Any) -> Any:
        """Run ``fn`` (a write of paid-for data); on a storage failure hold it and return
        ``held_result``. Other errors are raised."""
        now = self.clock()
        self.apply_fault()
        if self.held:
            self._hold(what, fn, now)  # after what is held already: written in order
            return held_result
        try:
            result = fn()
        except Exception as exc:
            problem = classify(exc)
            if problem is None:
                raise
            self._hold(what, fn, now)
            self._failed(problem, exc, now)
            return held_result
        self._ok(now)
        return result

    # --- helpers ------------------------------------------------------------------------

    def _probe(self) -> None:
        now = self.clock()
        self.storage.set_state(PROBE_KEY, {"at": now}, now)

    def _attempt(self, now: float, what: str, fn: Callable[[], Any]) -> bool:
        try:
            fn()
        except Exception as exc:
            problem = classify(exc)
            if problem is None:
                raise
            self._failed(problem, exc, now)
            return False
        self._ok(now)
        return True

    def _hold(self, what: str, fn: Callable[[], Any], now: float) -> None:
        if len(self.held) >= self.max_held:
            lost = self.held.popleft()
            self.dropped += 1
            log.error(
                "storage: more than %d writes held: dropping the oldest (%s, held %.0f s)",
                self.max_held,
                lost.what,
                now - lost.since,
            )
        self.held.append(Held(what, fn, now))
        self._send(now)

    def _failed(self, problem: str, exc: BaseException, now: float) -> None:
        if self.problem is None:
            self.since = now
            self._retry_wait_s = self.retry_min_s
        else:
            self._retry_wait_s = min(
                self.retry_max_s, max(self.retry_min_s, self._retry_wait_s * 2)
            )
        self.problem = problem
        self.detail = str(exc)[:200]
        self.retry_at = now + self._retry_wait_s
        self._say.failing(
            now,
            problem,
            f"{describe(problem)} ({self.detail}); asking for no permit, holding "
            f"{len(self.held)} writes, retrying every {self.retry_max_s:.1f} s at most",
        )
        self._send(now)

    def _ok(self, now: float) -> None:
        self.last_ok_at = now
        if self.problem is not None and not self.held:
            self.problem = self.since = None
            self.detail = ""
            self._retry_wait_s = 0.0
            self.retry_at = 0.0
            self._say.ok(now, "every held write landed; asking for permits again")
            self._send(now)

    def _send(self, now: float) -> None:
        self._report(self.snapshot(now))

    def snapshot(self, now: float) -> dict[str, Any]:
        """The heartbeat's ``storage`` field (empty while writes succeed)."""
        if not self.blocked:
            return {}
        return {
            "problem": self.problem or "held",
            "since_s": round(now - (self.since if self.since is not None else now), 3),
            "held": len(self.held),
            "dropped": self.dropped,
            "detail": self.detail,
        }

    def apply_fault(self) -> None:
        """The test-only fault (module docstring); a no-op unless FAULT_ENV is set."""
        if not self._fault_file:
            return
        conn = getattr(self.storage, "conn", None)
        if conn is None or getattr(conn, "in_transaction", False):
            return
        try:
            with open(self._fault_file, encoding="utf-8") as f:
                mode = f.read().strip()
        except OSError:
            mode = ""
        if mode == self._fault_mode:
            return
        self._fault_mode = mode
        if mode == "full":
            pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
            conn.execute(f"PRAGMA max_page_count = {pages}")
        elif mode == "readonly":
            conn.execute("PRAGMA query_only = 1")
        else:
            conn.execute(f"PRAGMA max_page_count = {NO_PAGE_LIMIT}")
            conn.execute("PRAGMA query_only = 0")
        log.warning("%s: storage fault %r (a test-only fault)", FAULT_ENV, mode or "lifted")


def storage_problem(exc: BaseException | None) -> str | None:
    """The storage problem of ``exc`` or of what it was raised while handling, or None."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, StorageBlocked):
            return exc.problem
        problem = classify(exc)
        if problem is not None:
            return problem
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


class GatedStorage:
    """The worker's ``Storage`` with the writes of paid-for data going through the gate
    (module docstring); everything else is the storage's own."""

    def __init__(self, storage: Any, gate: StorageGate) -> None:
        self._storage = storage
        self.gate = gate
        self._depth = 0  # inside transaction(): writes are the caller's, never held

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        self._depth += 1
        try:
            with self._storage.transaction() as db:
                yield db
        finally:
            self._depth -= 1

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._storage, name)
        held_result = HELD_WRITES.get(name)
        if held_result is None or not callable(attr):
            return attr

        def gated(*args: Any, **kwargs: Any) -> Any:
            conn = getattr(self._storage, "conn", None)
            if self._depth or (conn is not None and getattr(conn, "in_transaction", False)):
                return attr(*args, **kwargs)  # part of a caller's transaction: not held
            return self.gate.write(name, lambda: attr(*args, **kwargs), held_result(args))

        return gated


def gate_storage(storage: Storage, permits: Any) -> Storage:
    """The gate for ``storage``, attached to the permit client (``permits.gate``: checked
    before every permit, recovered by the work loop) and reporting into its heartbeats."""
    link = getattr(permits, "link", None)
    work = getattr(link, "work", None)
    report = getattr(work, "set_storage", None)
    gate = StorageGate(storage, report=report if callable(report) else (lambda s: None))
    permits.gate = gate
    return cast("Storage", GatedStorage(storage, gate))  # the same face, writes gated
