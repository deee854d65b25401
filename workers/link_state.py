"""What the worker's broker link keeps: its lifecycle (``LINK``), the work loop's progress
that heartbeats carry (``WorkState``), one outstanding request (``Waiter``), the reconnect
delays (``Backoff``) and the items of its outbox. ``workers/link.py`` is the link itself.

Link states (``state``; the table ``LINK`` is what the code obeys)::

    DISCONNECTED -> CONNECTING   the reconnect time came: new socket, HELLO sent
    CONNECTING -> READY          WELCOME received
    READY -> CONNECTING          DISCONNECT received: HELLO again on the same socket
    CONNECTING|READY -> DISCONNECTED   nothing heard from the broker for liveness x
                                 heartbeat (or ERROR during the handshake): socket closed,
                                 waits end with BrokerUnavailable, reconnect after a
                                 capped exponential backoff with jitter
    any -> CLOSED                ``close()`` (queued settles and BYE flushed)
    READY -> CLOSED              KILL (a KILL in any other state is ignored)
"""

from __future__ import annotations

import copy
import dataclasses
import random
import threading
from typing import Any

from common import protocol
from common.lifecycle import Lifecycle

# Link states.
DISCONNECTED = "disconnected"
CONNECTING = "connecting"
READY = "ready"
CLOSED = "closed"
LINK = Lifecycle(
    name="link",
    states=(DISCONNECTED, CONNECTING, READY, CLOSED),
    initial=DISCONNECTED,
    edges={
        (DISCONNECTED, CONNECTING): "the reconnect time came: new socket, HELLO sent",
        (CONNECTING, READY): "WELCOME received",
        (READY, CONNECTING): "DISCONNECT received: HELLO again on the same socket",
        (CONNECTING, DISCONNECTED): "no WELCOME in time, or HELLO refused: socket closed",
        (READY, DISCONNECTED): "nothing heard from the broker for liveness x heartbeat",
        (DISCONNECTED, CLOSED): "close()",
        (CONNECTING, CLOSED): "close()",
        (READY, CLOSED): "close(), or KILL from the broker that welcomed this connection",
    },
)

RECONNECT_MIN_S = 0.1  # first reconnect delay; doubles up to worker.reconnect_max_s
RECONNECT_JITTER = 0.5  # a delay is drawn from [(1 - JITTER) x backoff, backoff]


class WorkState:
    """What the heartbeats carry. Changed only by the work loop, read by the link thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.progress = 0
        self.waiting = False
        self.stage = ""
        self.items_done = 0
        self.info: dict[str, Any] = {}
        self.storage: dict[str, Any] = {}  # workers.storage_gate's report (empty: healthy)

    def set_storage(self, storage: dict[str, Any]) -> None:
        with self._lock:
            self.storage = dict(storage)

    def advance(self, stage: str, items: int = 0) -> None:
        with self._lock:
            self.progress += 1
            self.stage = stage
            self.items_done += max(0, int(items))

    def set_stage(self, stage: str) -> None:
        with self._lock:
            self.stage = stage

    def set_waiting(self, waiting: bool) -> None:
        with self._lock:
            self.waiting = waiting

    def report(self, info: dict[str, Any]) -> None:
        """Keys given replace the same keys of the last report; the others stay. Copied:
        the caller may change its dict afterwards."""
        info = copy.deepcopy(info)
        with self._lock:
            self.info = {**self.info, **info}

    def heartbeat(self) -> protocol.Heartbeat:
        with self._lock:
            return protocol.Heartbeat(
                progress=self.progress,
                waiting=self.waiting,
                stage=self.stage,
                items_done=self.items_done,
                info=dict(self.info),
                storage=dict(self.storage),
            )


@dataclasses.dataclass
class Waiter:
    """One outstanding REQUEST: the link thread fills in the outcome and sets ``done``."""

    seq: int
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    reply: protocol.Grant | protocol.Reject | None = None
    gone: str = ""  # why the wait ended without a reply (broker gone, DISCONNECT, ...)
    session: int = 0  # the link session the reply came in

    def resolve(self, reply: protocol.Grant | protocol.Reject, session: int) -> None:
        self.reply, self.session = reply, session
        self.done.set()

    def fail(self, reason: str) -> None:
        self.gone = reason
        self.done.set()


class Backoff:
    """Reconnect delays: start at ``RECONNECT_MIN_S``, double up to ``cap_s``, with jitter
    (each delay drawn from [(1 - RECONNECT_JITTER) x backoff, backoff])."""

    def __init__(self, cap_s: float, rng: random.Random | None = None) -> None:
        self.cap_s = max(cap_s, RECONNECT_MIN_S)
        self._rng = rng or random.Random()
        self._backoff_s = RECONNECT_MIN_S

    def next_delay(self) -> float:
        delay = self._backoff_s * self._rng.uniform(1.0 - RECONNECT_JITTER, 1.0)
        self._backoff_s = min(self._backoff_s * 2, self.cap_s)
        return delay

    def reset(self) -> None:
        self._backoff_s = RECONNECT_MIN_S


@dataclasses.dataclass(frozen=True)
class _Outgoing:
    message: protocol.Message
    session: int = 0  # for a SETTLE: the session its permit was granted in


@dataclasses.dataclass(frozen=True)
class _Close:
    bye_reason: str | None
