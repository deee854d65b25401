"""The worker link's answer to each message from the broker (the ``handle_<message>`` half
of ``BrokerLink``, ``workers/link.py``, which holds the state declared here).

Messages it handles (from the broker), one ``handle_<message>`` each:

==============  ============================================================================
message         what the link does
==============  ============================================================================
``WELCOME``     READY: takes the broker's timing settings and ``max_cost``; sends the
                settles kept while no broker was connected
``HEARTBEAT``   liveness only (its ``max_cost`` updates ``max_cost``)
``GRANT``       wakes the waiting ``call``; a grant nobody waits for is settled "not_sent"
``REJECT``      wakes the waiting ``call``; updates ``max_cost``
``KILL``        only while READY (the broker that welcomed this connection): logs the
                reason, best-effort BYE, then ``on_kill`` (the runtime exits); any other
                KILL is ignored, logged and counted (``kills_ignored``)
``DISCONNECT``  the broker does not know this worker: waits end, HELLO again at once
``ERROR``       logged; during the handshake it counts as a failed connection
==============  ============================================================================

Anything else from the socket is logged and ignored.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from common import protocol
from common.protocol import SettleStatus
from workers.link_state import CONNECTING, READY, Backoff, Waiter, _Outgoing

log = logging.getLogger("workers.link")

KILL_LINGER_MS = 500  # KILL: how long the best-effort BYE gets

HANDLERS: dict[str, str] = {
    protocol.Welcome.TYPE: "handle_welcome",
    protocol.Heartbeat.TYPE: "handle_heartbeat",
    protocol.Grant.TYPE: "handle_grant",
    protocol.Reject.TYPE: "handle_reject",
    protocol.Kill.TYPE: "handle_kill",
    protocol.Disconnect.TYPE: "handle_disconnect",
    protocol.Error.TYPE: "handle_error",
}


class LinkHandlers:
    address: str
    state: str
    heartbeat_s: float
    liveness: int
    lease_ttl_s: float
    broker_id: str
    backoff: Backoff
    kills_ignored: int
    on_kill: Callable[[str], None] | None
    _max_cost: int
    _spare: tuple[int, float]
    _next_heartbeat: float
    _lock: threading.Lock
    _ready: threading.Event
    _pending: dict[int, Waiter]
    _session: int
    _ctx: zmq.Context[Any]

    if TYPE_CHECKING:

        def _to(self, state: str) -> None: ...
        def _flush_backlog(self, *, retry: bool) -> None: ...
        def _send_settle(self, item: _Outgoing, *, retry: bool = False) -> None: ...
        def _send(self, msg: protocol.Message) -> bool: ...
        def _set_closed(self, reason: str, linger_ms: int = 0) -> None: ...
        def _not_ready(self, reason: str) -> None: ...
        def _send_hello(self, now: float) -> None: ...
        def _gone(self, now: float, reason: str) -> None: ...
        @staticmethod
        def _flush_logs() -> None: ...

    # --- handlers -------------------------------------------------------------------------

    def handle_welcome(self, msg: protocol.Welcome, now: float) -> None:
        new_session = self.state != READY  # a second WELCOME (two HELLOs crossed) is the same
        # CONNECTING -> READY
        self.heartbeat_s = msg.heartbeat_s if msg.heartbeat_s > 0 else self.heartbeat_s
        self.liveness = msg.liveness if msg.liveness > 0 else self.liveness
        self.lease_ttl_s = msg.lease_ttl_s
        self.broker_id = msg.broker_id
        if msg.max_cost > 0:
            self._max_cost = msg.max_cost
        self.backoff.reset()
        self._to(READY)
        self._next_heartbeat = now + self.heartbeat_s
        with self._lock:
            self._session += 1 if new_session else 0
            self._ready.set()
        if not new_session:
            return
        log.info(
            "connected to broker %s at %s (heartbeat %.2f s, liveness %d, max cost %d)",
            msg.broker_id,
            self.address,
            self.heartbeat_s,
            self.liveness,
            self._max_cost,
        )
        self._flush_backlog(retry=False)

    def handle_heartbeat(self, msg: protocol.Heartbeat, now: float) -> None:
        if msg.max_cost > 0:
            self._max_cost = msg.max_cost
        if msg.spare >= 0:
            self._spare = (msg.spare, now)

    def handle_grant(self, msg: protocol.Grant, now: float) -> None:
        with self._lock:
            waiter = self._pending.pop(msg.seq, None)
            session = self._session
        if waiter is not None:
            waiter.resolve(msg, session)
            return
        # Granted after its requester stopped waiting (deadline, stop, lost connection).
        log.info("GRANT %s for seq %d nobody waits for: settled not_sent", msg.permit, msg.seq)
        self._send_settle(
            _Outgoing(protocol.Settle(permit=msg.permit, status=SettleStatus.NOT_SENT), session)
        )

    def handle_reject(self, msg: protocol.Reject, now: float) -> None:
        if msg.max_cost > 0:
            self._max_cost = msg.max_cost
        with self._lock:
            waiter = self._pending.pop(msg.seq, None)
            session = self._session
        if waiter is not None:
            waiter.resolve(msg, session)
        else:
            log.debug("REJECT for seq %d nobody waits for (%s)", msg.seq, msg.reason)

    def handle_kill(self, msg: protocol.Kill, now: float) -> None:
        if self.state != READY:
            # Nothing has welcomed this connection: not a broker this worker registered with.
            self.kills_ignored += 1
            log.warning(
                "ignored KILL (%s) received while %s: only the broker that welcomed this "
                "worker may tell it to die",
                msg.reason[:200],
                self.state,
            )
            return
        # READY -> CLOSED, then the process exits
        log.critical("KILL from the broker (%s): exiting now", msg.reason[:200])
        self._send(protocol.Bye(reason=f"killed: {msg.reason}"[:200]))
        self._set_closed(f"killed by the broker: {msg.reason}", KILL_LINGER_MS)
        with contextlib.suppress(zmq.ZMQError):
            self._ctx.term()  # lets the BYE leave (at most KILL_LINGER_MS)
        self._flush_logs()
        if self.on_kill is not None:
            self.on_kill(msg.reason)

    def handle_disconnect(self, msg: protocol.Disconnect, now: float) -> None:
        # READY|CONNECTING -> CONNECTING
        log.info("DISCONNECT from the broker (%s): HELLO again", msg.reason[:200])
        self._to(CONNECTING)
        self._not_ready(f"the broker does not know this worker: {msg.reason}")
        self._send_hello(now)

    def handle_error(self, msg: protocol.Error, now: float) -> None:
        log.warning("ERROR from the broker: %s %s", msg.code, msg.detail[:200])
        if self.state == CONNECTING:
            self._gone(now, f"HELLO refused: {msg.code}")
