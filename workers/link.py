"""The worker's link to the broker: one thread that owns the DEALER socket.

Nothing else touches the socket. The work loop talks to the link through thread-safe calls
(``request``, ``cancel``, ``settle``, ``close``) that put messages on a queue and wake the
link thread through a socket pair; replies come back through ``Waiter`` objects (an Event
and the reply). The link thread sends HELLO, heartbeats every ``heartbeat_s`` (even while
the work loop is stuck in an HTTP call), carrying the ``WorkState`` that only the work loop
changes, watches the broker's liveness and reconnects.

The messages from the broker and what the link does with each: ``workers/link_handlers.py``.

Link states: the table ``LINK`` in ``workers/link_state.py``.

Only the broker may tell a worker to die. The DEALER connects out to one address and binds
nothing, so only whatever answers at that address can send to it; with CURVE the worker
also checks that the peer holds the broker's key. A KILL is obeyed only while READY: on
this connection, after the WELCOME that registered this process. A KILL arriving before
the WELCOME (from something else listening at the broker's address, or an answer crossing
a reconnect) is ignored and logged.

Only READY sends REQUEST, CANCEL, SETTLE and heartbeats. A SETTLE while not READY is kept
(at most ``MAX_SETTLE_BACKLOG``) and sent after the next WELCOME, to whichever broker is
there then; one that cannot be kept or sent is logged, never dropped silently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import logging
import queue
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from common import procinfo, protocol
from common.curve import setup_client
from common.errors import BrokerUnavailable, ConfigError, ProtocolError
from common.lifecycle import transition
from workers.link_handlers import HANDLERS, LinkHandlers
from workers.link_state import (
    CLOSED,
    CONNECTING,
    DISCONNECTED,
    LINK,
    READY,
    RECONNECT_JITTER,
    RECONNECT_MIN_S,
    Backoff,
    Waiter,
    WorkState,
    _Close,
    _Outgoing,
)

__all__ = ["LINK", "RECONNECT_JITTER", "RECONNECT_MIN_S", "BrokerLink", "Waiter", "WorkState"]

log = logging.getLogger(__name__)
# A spare figure older than this many heartbeats is not acted on (the broker is quiet).
SPARE_FRESH_HEARTBEATS = 3

MAX_POLL_S = 0.5  # safety cap of the poll timeout
MAX_RECV_PER_TURN = 200  # messages handled per turn before housekeeping runs
FLUSH_LINGER_MS = 2000  # close(): how long queued SETTLEs and BYE get to leave
MAX_SETTLE_BACKLOG = 256  # settles kept while no broker is connected
MAX_INFO_BYTES = 16 * 1024  # a heartbeat whose info is larger is sent without it
JOIN_SLACK_S = 2.0  # close(): extra time to join the thread after the flush

try:
    VERSION = importlib.metadata.version("keepa-fleet")
except importlib.metadata.PackageNotFoundError:  # running from a bare checkout
    VERSION = "0.0.0"


class BrokerLink(LinkHandlers):
    """The socket thread. Start it with ``start()``; end it with ``close(bye_reason)``."""

    def __init__(
        self,
        address: str,
        *,
        worker_id: str,
        role: str,
        heartbeat_s: float = 1.0,
        liveness: int = 5,
        reconnect_max_s: float = 30.0,
        curve_dir: str = "",
        on_kill: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.address = address
        self.worker_id = worker_id
        self.role = role
        self.host = procinfo.this_host()
        self.pid, self.start_time = procinfo.own_identity()
        self.work = WorkState()
        self.on_kill = on_kill
        self._clock = clock
        self._curve_dir = curve_dir
        # Timing: the settings' values until a WELCOME brings the broker's.
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self.lease_ttl_s = 0.0
        self.backoff = Backoff(reconnect_max_s, rng)
        self.broker_id = ""
        self._max_cost = 0
        self._spare: tuple[int, float] = (0, 0.0)  # (tokens, when the broker said so)
        # Shared with the work loop (under _lock).
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._pending: dict[int, Waiter] = {}
        self._session = 0  # WELCOMEs so far: a grant of an earlier one is from a gone broker
        self._outbox: queue.SimpleQueue[_Outgoing | _Close] = queue.SimpleQueue()
        self._closed = threading.Event()
        # The link thread's own.
        self.state = DISCONNECTED
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._sock: zmq.Socket[Any] | None = None
        self._poller = zmq.Poller()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._reconnect_at = 0.0
        self._last_heard = 0.0
        self._next_heartbeat = 0.0
        self._settle_backlog: list[_Outgoing] = []
        self._info_warned = False
        self._thread: threading.Thread | None = None
        self.kills_ignored = 0  # KILLs not from a broker that welcomed this connection
        if curve_dir:
            self._check_curve()

    # --- the work loop's side (thread-safe) --------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="broker-link", daemon=True)
        self._thread.start()

    @property
    def ready(self) -> bool:
        """True while a broker has welcomed this worker (permits can be asked for)."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    @property
    def max_cost(self) -> int:
        return self._max_cost

    def spare(self) -> int:
        """Tokens the broker says the next refill would lose to the cap (its latest
        heartbeat, if fresher than ``SPARE_FRESH_HEARTBEATS`` heartbeats), else 0."""
        tokens, at = self._spare
        fresh = self._clock() - at <= SPARE_FRESH_HEARTBEATS * self.heartbeat_s
        return tokens if fresh else 0

    def request(self, message: protocol.Request) -> Waiter:
        """Send a REQUEST; the returned waiter is resolved by GRANT/REJECT or failed when the
        broker goes. Raises BrokerUnavailable (sends nothing) when no broker is connected."""
        with self._lock:
            if not self._ready.is_set() or self._closed.is_set():
                raise BrokerUnavailable(f"no broker connected at {self.address}")
            waiter = Waiter(message.seq)
            self._pending[message.seq] = waiter
            self._outbox.put(_Outgoing(message))
        self._wake()
        return waiter

    def cancel(self, seq: int) -> bool:
        """Stop waiting for ``seq``; sends CANCEL when it was still outstanding. Returns
        False when its waiter had already been resolved or failed."""
        with self._lock:
            waiter = self._pending.pop(seq, None)
            if waiter is not None:
                self._outbox.put(_Outgoing(protocol.Cancel(seq=seq)))
        if waiter is not None:
            self._wake()
        return waiter is not None

    def settle(self, message: protocol.Settle, session: int) -> None:
        """Queue a SETTLE for the permit granted in ``session``."""
        self._outbox.put(_Outgoing(message, session))
        self._wake()

    def close(self, bye_reason: str | None = None, timeout_s: float | None = None) -> None:
        """Flush what is queued (settles first), say BYE when a broker is connected and
        ``bye_reason`` is given, close the socket and end the thread. Idempotent."""
        self._outbox.put(_Close(bye_reason))
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(FLUSH_LINGER_MS / 1000 + JOIN_SLACK_S if timeout_s is None else timeout_s)
        elif thread is None:
            self._finish()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # a full pipe is already awake
            self._wake_w.send(b"\0")

    # --- the link thread ----------------------------------------------------------------

    def _run(self) -> None:
        self._poller.register(self._wake_r.fileno(), zmq.POLLIN)
        try:
            while self.state != CLOSED:
                try:
                    self.loop_once(self._clock())
                except Exception:  # the loop boundary: log and go on
                    log.exception("broker link: unexpected error")
                    self._closed.wait(0.1)  # a persistent error must not spin
        finally:
            self._finish()

    def loop_once(self, now: float) -> None:
        """One turn: connect when due, poll (nearest timer), receive, send, housekeeping."""
        if self.state == DISCONNECTED and now >= self._reconnect_at:
            self._open(now)
        timeout_s = min(MAX_POLL_S, max(0.0, self._next_timer(now) - now))
        events = dict(self._poller.poll(int(timeout_s * 1000) + 1))
        now = self._clock()
        if self._wake_r.fileno() in events:
            with contextlib.suppress(BlockingIOError, OSError):
                while self._wake_r.recv(4096):
                    pass
        if self._sock is not None and self._sock in events:
            self._receive(now)
        self._send_outbox(now)
        if self.state != CLOSED:
            self._housekeeping(self._clock())

    def _next_timer(self, now: float) -> float:
        if self.state == DISCONNECTED:
            return self._reconnect_at
        times = [self._last_heard + self.liveness * self.heartbeat_s]
        if self.state == READY:
            times.append(self._next_heartbeat)
        return min(times)

    def _open(self, now: float) -> None:
        # DISCONNECTED -> CONNECTING
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            if self._curve_dir:
                setup_client(sock, self._curve_dir)
            sock.connect(self.address)
        except (zmq.ZMQError, OSError, ValueError, ConfigError) as exc:
            sock.close(0)
            delay = self.backoff.next_delay()
            self._reconnect_at = now + delay
            log.error("cannot connect to %s (%s): again in %.2f s", self.address, exc, delay)
            return
        self._sock = sock
        self._poller.register(sock, zmq.POLLIN)
        self._to(CONNECTING)
        self._last_heard = now
        self._send_hello(now)

    def _send_hello(self, now: float) -> None:
        self._last_heard = now  # the handshake gets liveness x heartbeat
        self._send(
            protocol.Hello(
                worker_id=self.worker_id,
                pid=self.pid,
                host=self.host,
                start_time=self.start_time,
                role=self.role,
                version=VERSION,
            )
        )
        log.debug("HELLO sent to %s as %s", self.address, self.worker_id)

    def _close_socket(self, linger_ms: int = 0) -> None:
        if self._sock is None:
            return
        with contextlib.suppress(KeyError):
            self._poller.unregister(self._sock)
        with contextlib.suppress(zmq.ZMQError):
            self._sock.setsockopt(zmq.LINGER, linger_ms)
        self._sock.close()
        self._sock = None

    def _receive(self, now: float) -> None:
        assert self._sock is not None
        for _ in range(MAX_RECV_PER_TURN):
            if self._sock is None or self.state == CLOSED:
                return
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._last_heard = now  # any frame from the broker shows it is alive
            if len(frames) != 1:
                log.warning("ignored a message of %d frames from the broker", len(frames))
                continue
            try:
                msg = protocol.decode(frames[0])
            except ProtocolError as exc:
                log.warning("ignored an undecodable message from the broker: %s", exc)
                continue
            handler = HANDLERS.get(msg.TYPE)
            if handler is None:
                log.warning("ignored %s from the broker: not a broker-to-worker message", msg.TYPE)
                continue
            getattr(self, handler)(msg, now)

    def _send_outbox(self, now: float) -> None:
        while True:
            try:
                item = self._outbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Close):
                self._do_close(item.bye_reason)
                return
            msg = item.message
            if isinstance(msg, protocol.Settle):
                self._send_settle(item)
            elif isinstance(msg, protocol.Request):
                with self._lock:
                    still_waited_for = msg.seq in self._pending
                if not still_waited_for:  # failed when the broker went: never to a new one
                    log.debug("REQUEST seq %d dropped: its wait has ended", msg.seq)
                elif self.state != READY or not self._send(msg):
                    self._fail_one(msg.seq, "the broker connection was lost before the request")
            elif self.state == READY:
                self._send(msg)
            else:
                log.debug("%s dropped: no broker connected", msg.TYPE)

    def _send_settle(self, item: _Outgoing, *, retry: bool = False) -> None:
        msg = item.message
        assert isinstance(msg, protocol.Settle)
        if self.state == READY:
            if item.session != self._session:
                log.info(
                    "settling permit %s (%s), granted by an earlier broker connection, "
                    "with the broker connected now",
                    msg.permit,
                    msg.status,
                )
            if self._send(msg):
                return
        if len(self._settle_backlog) < MAX_SETTLE_BACKLOG:
            self._settle_backlog.append(item)
            if not retry:
                log.warning(
                    "the settle of permit %s (%s) could not be sent (%s): kept, sent again "
                    "when a broker takes it",
                    msg.permit,
                    msg.status,
                    "no broker connected" if self.state != READY else "queue full",
                )
        else:
            log.error(
                "no broker connected and %d settles kept already: the settle of permit %s "
                "(%s) is dropped; its lease will expire at the broker",
                MAX_SETTLE_BACKLOG,
                msg.permit,
                msg.status,
            )

    def _send(self, msg: protocol.Message) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.send(msg.encode(), zmq.NOBLOCK)
        except zmq.Again:
            log.warning("%s not sent: the queue to the broker is full", msg.TYPE)
            return False
        except zmq.ZMQError as exc:
            log.warning("%s not sent: %s", msg.TYPE, exc)
            return False
        except ProtocolError as exc:
            log.error("%s not sent: %s", msg.TYPE, exc)
            return False
        return True

    def _housekeeping(self, now: float) -> None:
        silent_s = now - self._last_heard
        if self.state in (CONNECTING, READY) and silent_s > self.liveness * self.heartbeat_s:
            what = "no WELCOME" if self.state == CONNECTING else "nothing heard"
            self._gone(now, f"{what} from the broker for {silent_s:.1f} s")
            return
        if self.state == READY and now >= self._next_heartbeat:
            self._send_heartbeat()
            self._next_heartbeat = now + self.heartbeat_s
            if self._settle_backlog:
                self._flush_backlog(retry=True)

    def _flush_backlog(self, *, retry: bool) -> None:
        backlog, self._settle_backlog = self._settle_backlog, []
        if backlog and not retry:
            log.info("sending %d settles kept while no broker was connected", len(backlog))
        for item in backlog:
            self._send_settle(item, retry=retry)

    def _send_heartbeat(self) -> None:
        hb = self.work.heartbeat()
        try:
            size = len(hb.encode())
        except ProtocolError as exc:
            size, problem = -1, str(exc)
        else:
            problem = f"{size} bytes > {MAX_INFO_BYTES}"
        if size < 0 or size > MAX_INFO_BYTES:
            if not self._info_warned:
                log.warning("heartbeat info left out (%s): keep report() small", problem)
                self._info_warned = True
            hb = dataclasses.replace(hb, info={})
        self._send(hb)

    def _gone(self, now: float, reason: str) -> None:
        # CONNECTING|READY -> DISCONNECTED
        delay = self.backoff.next_delay()
        self._reconnect_at = now + delay
        log.warning("broker %s gone (%s): reconnecting in %.2f s", self.address, reason, delay)
        self._close_socket()
        self._to(DISCONNECTED)
        self._not_ready(f"broker gone: {reason}")

    def _not_ready(self, reason: str) -> None:
        with self._lock:
            self._ready.clear()
            pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.fail(reason)

    def _fail_one(self, seq: int, reason: str) -> None:
        with self._lock:
            waiter = self._pending.pop(seq, None)
        if waiter is not None:
            waiter.fail(reason)

    def _do_close(self, bye_reason: str | None) -> None:
        # any -> CLOSED
        if bye_reason is not None and self.state == READY:
            self._send(protocol.Bye(reason=bye_reason))
            log.info("BYE sent (%s)", bye_reason)
        if self._settle_backlog:
            log.error(
                "closing with %d settles no broker received (permits %s): their leases will "
                "expire at the broker",
                len(self._settle_backlog),
                ", ".join(str(getattr(i.message, "permit", "?")) for i in self._settle_backlog),
            )
            self._settle_backlog.clear()
        self._set_closed("the broker link is closed", FLUSH_LINGER_MS)

    def _to(self, state: str) -> None:
        transition(LINK, self, state, logger=log, subject=self.worker_id)

    def _set_closed(self, reason: str, linger_ms: int = 0) -> None:
        # any -> CLOSED: the socket closed (``linger_ms`` for what is queued), waits ended
        self._close_socket(linger_ms)
        self._to(CLOSED)
        self._closed.set()
        self._not_ready(reason)

    def _finish(self) -> None:
        if self.state != CLOSED:
            self._set_closed("the broker link is closed")
        with contextlib.suppress(KeyError, ValueError):
            self._poller.unregister(self._wake_r.fileno())
        self._wake_r.close()
        self._wake_w.close()
        if not self._ctx.closed:
            self._ctx.term()  # waits at most the linger of the socket closed last

    @staticmethod
    def _flush_logs() -> None:
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()

    def _check_curve(self) -> None:
        """Fail at start (ConfigError) when the CURVE keys are missing or unreadable."""
        sock = self._ctx.socket(zmq.DEALER)
        try:
            setup_client(sock, self._curve_dir)
        finally:
            sock.close(0)
