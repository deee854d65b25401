"""Asking Keepa ``/token`` for the truth: when (``SyncPolicy``) and how (``TokenSync``).

``/token`` is free, but Keepa dislikes it being hammered: the broker is its one caller, at a
bounded rate. docs/ARCHITECTURE.md "Never trust stale state" says when to ask:

==================  ========================================================================
reason              when
==================  ========================================================================
``start``           no observation yet: nothing is granted before the first answer
``unknown_outcome`` the ledger says so (a lease expired unsettled, an outcome is unknown)
``gap``             the newest observation is older than ``broker.sync_gap_s``
``long_wait``       the permit book's head would wait longer than ``broker.short_wait_s``
                    (asked once per refill step while the wait lasts)
==================  ========================================================================

Never more often than ``broker.sync_min_interval_s``; a failed call is retried with a
doubling backoff (up to ``BACKOFF_MAX_S``) and grants stay closed until an observation
exists.

``TokenSync`` runs the blocking HTTP call in its own thread; the result comes back through a
queue, and a one-byte note on an inproc PAIR socket wakes the broker's poller — the broker's
loop never blocks on HTTP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

import zmq

from common.errors import KeepaError
from common.keepa import KeepaResponse, TokenEnvelope

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
STOP_JOIN_S = 2.0

START = "start"
UNKNOWN_OUTCOME = "unknown_outcome"
GAP = "gap"
LONG_WAIT = "long_wait"

_STOP = b"stop"
_ids = itertools.count(1)


class TokenSource(Protocol):
    def token(self) -> KeepaResponse: ...


@dataclasses.dataclass(frozen=True)
class SyncResult:
    reason: str
    started_at: float
    at: float  # when the answer (or the failure) came back, broker clock
    envelope: TokenEnvelope | None
    error: str = ""  # empty on success
    status: int | None = None  # HTTP status of a failure, when there was one

    @property
    def ok(self) -> bool:
        return not self.error


class SyncPolicy:
    """When to call ``/token``. Pure: ``now`` and the ledger's figures are passed in."""

    def __init__(
        self,
        *,
        min_interval_s: float,
        gap_s: float,
        short_wait_s: float,
        refill_period_s: float,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self.min_interval_s = min_interval_s
        self.gap_s = gap_s
        self.short_wait_s = short_wait_s
        self.refill_period_s = refill_period_s
        self.backoff_max_s = backoff_max_s
        self.in_flight = False
        self.failures = 0  # consecutive
        self.next_allowed_at = float("-inf")
        self.last_success_at: float | None = None
        self._confirmed_refill_at: float | None = None

    def reason(
        self,
        now: float,
        *,
        has_observation: bool,
        last_observation_at: float | None,
        needs_sync: bool,
        head_wait_s: float | None,
        refill_at: float | None,
    ) -> str | None:
        """Why a sync is wanted now (whether or not the rate limit allows it), or None."""
        long_wait = head_wait_s is not None and head_wait_s > self.short_wait_s
        if not long_wait:
            self._confirmed_refill_at = None
        if not has_observation or last_observation_at is None:
            return START
        if needs_sync:
            return UNKNOWN_OUTCOME
        if now - last_observation_at >= self.gap_s:
            return GAP
        if long_wait and (
            self._confirmed_refill_at is None
            or refill_at is None
            or refill_at - self._confirmed_refill_at > self.refill_period_s / 2
        ):
            return LONG_WAIT
        return None

    def may_start(self, now: float) -> bool:
        return not self.in_flight and now >= self.next_allowed_at

    def started(self, reason: str, now: float, refill_at: float | None) -> None:
        self.in_flight = True
        self.next_allowed_at = now + self.min_interval_s
        if reason == LONG_WAIT:
            self._confirmed_refill_at = refill_at

    def finished(self, ok: bool, now: float) -> None:
        self.in_flight = False
        if ok:
            self.failures = 0
            self.last_success_at = now
            self.next_allowed_at = max(self.next_allowed_at, now + self.min_interval_s)
        else:
            self.failures += 1
            backoff = max(self.min_interval_s, BACKOFF_BASE_S) * 2 ** min(self.failures - 1, 20)
            self.next_allowed_at = now + min(self.backoff_max_s, backoff)

    def gap_due_at(self, last_observation_at: float | None) -> float | None:
        return None if last_observation_at is None else last_observation_at + self.gap_s


class TokenSync:
    """Runs ``/token`` calls in a thread of its own. The broker's loop owns ``socket`` (poll
    it for POLLIN, then call ``results()``) and calls ``request()``; the thread owns the
    Keepa client and the other end of the pair."""

    def __init__(
        self,
        ctx: zmq.Context[Any],
        client_factory: Callable[[], TokenSource],
        clock: Callable[[], float],
    ) -> None:
        self._ctx = ctx
        self._client_factory = client_factory
        self._clock = clock
        self._endpoint = f"inproc://keepa-fleet-token-sync-{next(_ids)}"
        self.socket: zmq.Socket[Any] = ctx.socket(zmq.PAIR)
        self.socket.linger = 0
        self.socket.bind(self._endpoint)
        self._results: queue.SimpleQueue[SyncResult] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="token-sync", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise RuntimeError("the token sync thread did not start")

    def request(self, reason: str) -> None:
        """Ask the thread for one ``/token`` call (it answers through ``results``)."""
        self.socket.send(reason.encode(), zmq.NOBLOCK)

    def results(self) -> list[SyncResult]:
        """The answers that came back (drains the wake-up notes)."""
        while True:
            try:
                self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        out = []
        while True:
            try:
                out.append(self._results.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> bool:
        """Stop the thread; True when it finished (False: stuck in an HTTP call, left as a
        daemon). Closes the loop's end of the pair."""
        with contextlib.suppress(zmq.ZMQError):
            self.socket.send(_STOP, zmq.NOBLOCK)
        stopped = True
        if self._thread.is_alive():
            self._thread.join(timeout=STOP_JOIN_S)
            stopped = not self._thread.is_alive()
        self.socket.close(linger=0)
        return stopped

    # --- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        sock = self._ctx.socket(zmq.PAIR)
        sock.linger = 0
        sock.connect(self._endpoint)
        self._ready.set()
        client: TokenSource | None = None
        try:
            while True:
                request = sock.recv()
                if request == _STOP:
                    return
                if client is None:
                    client = self._client_factory()
                self._results.put(self._call(client, request.decode(errors="replace")))
                try:
                    sock.send(b"!", zmq.NOBLOCK)
                except zmq.ZMQError:
                    return  # the loop's end is gone
        except zmq.ContextTerminated:
            return
        finally:
            sock.close(linger=0)
            close = getattr(client, "close", None)
            if callable(close):
                close()

    def _call(self, client: TokenSource, reason: str) -> SyncResult:
        started = self._clock()
        try:
            resp = client.token()
        except KeepaError as exc:
            return SyncResult(
                reason,
                started,
                self._clock(),
                exc.envelope if isinstance(exc.envelope, TokenEnvelope) else None,
                error=str(exc) or type(exc).__name__,
                status=exc.status,
            )
        except Exception as exc:  # the thread's loop boundary: report, never die
            log.exception("unexpected error calling /token")
            return SyncResult(reason, started, self._clock(), None, error=type(exc).__name__)
        return SyncResult(reason, started, self._clock(), resp.envelope)
