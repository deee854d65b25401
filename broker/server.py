"""The broker process: the core (``broker/core.py``) on a socket (``broker/transport.py``).

==================  ======================================================================
module              what it holds
==================  ======================================================================
``core``            every decision: the dispatch table, ``handle_<message>``, housekeeping,
                    sync decisions, draining — messages in, messages out, ``now`` passed in
``transport``       the ROUTER, the poller, the wake pipe, receive batching, sends
``snapshot``        the typed status snapshot that status, metrics and the summary read
``killer``          the whole kill path (detect -> signal -> confirm -> gone)
``server``          this: lifecycle (bind, threads, drain on SIGTERM, stop) and the loop
==================  ======================================================================

One loop turn (``loop_once``): poll with the nearest timer as timeout (permit book wake-up,
heartbeat due, silence or stall deadline, kill grace, sync due, summary line; never
infinite, never more than ``MAX_POLL_S``), dispatch what arrived, then the core's fixed
housekeeping. The ``/token`` call runs in ``broker.sync``'s thread; its answer arrives on an
inproc socket in the same poller.

Run it with ``Broker(settings).serve(stop)`` (the CLI), or in a thread for tests::

    broker = Broker(settings, keepa_client=None, clock=time.monotonic)
    thread, stop = broker.start_thread()      # returns once bound, sync thread running
    ... broker.address ...                    # the actual endpoint (tcp://HOST:0 -> a port)
    broker.begin_drain()                      # optional: what SIGTERM does
    broker.stop(); broker.join(10)            # sockets closed when join returns True

or ``with running_broker(settings, keepa_client=fake) as broker: ...``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import zmq

from broker.core import (
    DRAIN_TIMEOUT_S,
    HANDLERS,
    MAX_PERMIT_CHARS,
    MAX_POLL_S,
    OPEN_MESSAGES,
    SUMMARY_EVERY_S,
    VERSION,
    BrokerCore,
    Peer,
)
from broker.handlers import MAX_SETTLED_IDS
from broker.metrics import BrokerMetrics
from broker.snapshot import json_safe
from broker.sync import TokenSource, TokenSync
from broker.transport import MAX_BATCH, Transport
from common.config import Settings
from common.curve import require_curve_for
from common.keepa import KeepaClient
from common.protocol import MAX_TRANSPORT_BYTES

__all__ = [
    "DRAIN_TIMEOUT_S",
    "HANDLERS",
    "MAX_BATCH",
    "MAX_PERMIT_CHARS",
    "MAX_POLL_S",
    "MAX_SETTLED_IDS",
    "MAX_TRANSPORT_BYTES",
    "OPEN_MESSAGES",
    "VERSION",
    "Broker",
    "Peer",
    "json_safe",
    "running_broker",
]

log = logging.getLogger(__name__)

SPIN_LIMIT = 100  # zero-timeout turns in a row with no message before the floor applies
SPIN_FLOOR_S = 0.01


class Broker(BrokerCore):
    """The broker actor. Its state is touched only by the thread running its loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        keepa_client: TokenSource | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        drain_timeout_s: float | None = None,
        signal_fn: Callable[[int, int], None] = os.kill,
        this_host: str | None = None,
    ) -> None:
        require_curve_for(settings.broker.address, settings.broker.curve_dir)
        self.transport = Transport()
        super().__init__(
            settings,
            send=self.transport.send,
            request_sync=self._request_sync_thread,
            clock=clock,
            wall_clock=wall_clock,
            drain_timeout_s=drain_timeout_s,
            signal_fn=signal_fn,
            this_host=this_host,
        )
        self._keepa_client = keepa_client
        self._sync: TokenSync | None = None
        self._idle_spins = 0
        self._due_at = float("-inf")  # the nearest timer, as of the latest housekeeping
        self._drain_requested = threading.Event()
        self._stop: threading.Event | None = None
        self._started = threading.Event()
        self._stopped = threading.Event()
        self._start_error: BaseException | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def initialize(self) -> None:
        """Bind the ROUTER, start the sync thread. Call from the thread that runs the loop."""
        b = self.settings.broker
        self.address = self.transport.bind(b.address, b.curve_dir)
        assert self.transport.ctx is not None
        self._sync = TokenSync(self.transport.ctx, self._client_factory, self.clock)
        self._sync.start()
        self.transport.register(self._sync.socket)
        now = self.clock()
        self.started_at = now
        self.summary_at = now + SUMMARY_EVERY_S
        if b.metrics_port:
            self.metrics = BrokerMetrics(b.metrics_port)
        log.info(
            "broker %s listening on %s (heartbeat %.2f s x %d, lease %.1f s, refill period "
            "%.2f s); asking Keepa /token before the first grant",
            self.broker_id,
            self.address,
            b.heartbeat_s,
            b.liveness,
            b.lease_ttl_s,
            self.settings.keepa.refill_period_s,
        )

    def run(self, stop: threading.Event) -> None:
        """The one runner: turn the loop until ``stop`` is set or a drain has finished."""
        self._stop = stop
        while not stop.is_set() and not self._drained:
            try:
                self.loop_once()
            except Exception:  # the loop boundary: log, go on
                log.exception("broker loop turn failed; carrying on")
                stop.wait(0.01)  # never spin on a persistent failure

    def shutdown(self) -> None:
        """Close sockets and threads (same thread as the loop)."""
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        sync_stopped = True
        if self._sync is not None:
            sync_stopped = self._sync.close()
            self._sync = None
        self.transport.close(term=sync_stopped)
        if not sync_stopped:
            log.warning("the /token thread is still in an HTTP call; leaving it behind")
        log.info("broker %s stopped", self.broker_id)

    def serve(self, stop: threading.Event) -> int:
        """initialize, run, shutdown. Returns the exit code (0)."""
        try:
            self.initialize()
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            raise
        self._started.set()
        try:
            self.run(stop)
        finally:
            try:
                self.shutdown()
            finally:
                self._stopped.set()
        return 0

    def begin_drain(self) -> None:
        """Ask for a graceful stop (SIGTERM): safe from a signal handler or another thread."""
        self._drain_requested.set()
        self.wake()

    def stop(self) -> None:
        """Stop at once (tests): safe from another thread."""
        if self._stop is not None:
            self._stop.set()
        self.wake()

    def join(self, timeout: float) -> bool:
        """Wait until the loop has stopped and the sockets are closed (True) or ``timeout``."""
        return self._stopped.wait(timeout)

    def wake(self) -> None:
        """Interrupt the poll (thread- and signal-safe)."""
        self.transport.wake()

    def start_thread(self, timeout: float = 10.0) -> tuple[threading.Thread, threading.Event]:
        """Run the broker in a daemon thread; returns once it is bound (raises otherwise)."""
        stop = threading.Event()
        self._stop = stop
        thread = threading.Thread(
            target=self._serve_in_thread, args=(stop,), name=f"broker-{self.broker_id}", daemon=True
        )
        thread.start()
        if not self._started.wait(timeout):
            stop.set()
            raise RuntimeError(f"the broker did not start within {timeout} s")
        if self._start_error is not None:
            thread.join(timeout)
            raise self._start_error
        return thread, stop

    def _serve_in_thread(self, stop: threading.Event) -> None:
        with contextlib.suppress(Exception):
            self.serve(stop)

    def _client_factory(self) -> TokenSource:
        if self._keepa_client is not None:
            return self._keepa_client
        return KeepaClient.from_settings(self.settings)

    def _request_sync_thread(self, reason: str) -> bool:
        assert self._sync is not None
        try:
            self._sync.request(reason)
        except zmq.ZMQError as exc:
            log.error("cannot reach the /token thread: %s", exc)
            return False
        return True

    # --- the loop -----------------------------------------------------------------------

    def loop_once(self, now: float | None = None) -> None:
        """One turn: poll (nearest timer), dispatch, housekeeping."""
        router = self.transport.router
        assert router is not None and self._sync is not None, "initialize() first"
        if now is None:
            now = self.clock()
        due_s = max(0.0, self._due_at - now)
        timeout_s = due_s
        if self._idle_spins >= SPIN_LIMIT:
            # A timer that stays due while nothing changes would spin the CPU: never.
            if self._idle_spins == SPIN_LIMIT:
                log.warning(
                    "a timer stays due with nothing to do; polling every %.3f s", SPIN_FLOOR_S
                )
            timeout_s = max(due_s, SPIN_FLOOR_S)
        events = self.transport.poll(timeout_s)
        self.loop_turns += 1
        self._idle_spins = self._idle_spins + 1 if due_s == 0 and not events else 0
        now = self.clock()
        if self._drain_requested.is_set() and not self.draining:
            self._start_drain(now)
        if self._sync.socket in events:
            for result in self._sync.results():
                self._on_sync_result(result)
        # Housekeeping runs when a timer fell due or a message may have changed what it acts
        # on. A turn that carried only heartbeats changes neither (their timers are renewed
        # by the registry's scans), and skipping it there is most of the broker's cost with
        # hundreds of workers heartbeating.
        housekeep = bool(events.keys() - {router}) or due_s == 0
        if router in events:
            for frames in self.transport.receive():
                try:
                    if self.dispatch(frames, now):
                        housekeep = True
                except Exception:  # one message's boundary: count it, keep serving
                    housekeep = True
                    self.bad_messages["internal_error"] += 1
                    log.exception("handling a message failed")
        now = self.clock()
        if housekeep or self.draining or now >= self._due_at:
            self.housekeeping(now)
            self._due_at = now + self.poll_timeout_s(now)
        elif self.registry.deadline_stale:  # a heartbeat started a timer (a stall's)
            self._due_at = min(self._due_at, now + self.poll_timeout_s(now))


@contextlib.contextmanager
def running_broker(settings: Settings, **kwargs: Any) -> Iterator[Broker]:
    """A broker serving in a thread for the duration of the block (tests)."""
    broker = Broker(settings, **kwargs)
    thread, stop = broker.start_thread()
    try:
        yield broker
    finally:
        stop.set()
        broker.wake()
        thread.join(15)
