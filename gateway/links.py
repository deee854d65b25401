"""``ClientLink``: a program on the key registered at the broker as a *client*.

One ``BrokerLink`` (the workers' socket thread: HELLO, heartbeats, reconnects, settles kept
across a broker restart) under the role ``protocol.ROLE_CLIENT``, so the broker shows it
beside the workers, never kills it and counts its spending apart. Unlike a worker's permit
client it is used by many threads at once (one per HTTP request of the gateway, or a user's
threads): sequence numbers come from one counter under a lock, and a wait can be abandoned
(the HTTP client hung up) as well as time out.

A permit's life here::

    acquire(cost, priority, wait_s, abandoned)
        REQUEST --> GRANT                              --> Held (call Keepa, then settle)
                --> REJECT                             --> PermitRejected / PermitTimeout
                --> wait_s passes                      --> CANCEL, PermitTimeout
                --> abandoned() turns true             --> CANCEL, ClientGone
                --> a GRANT crossing the CANCEL        --> settled "not_sent", same error
                --> broker gone                        --> BrokerUnavailable
    settle(held, status, envelope, http_status)        --> SETTLE (exactly once per Held)

So no permit is ever left behind by a caller that stops waiting.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from common import protocol
from common.errors import BrokerUnavailable, FleetError, PermitRejected, PermitTimeout
from workers.link import BrokerLink

log = logging.getLogger(__name__)

WAIT_STEP_S = 0.05  # how often a waiting acquire looks at abandoned()
READY_WAIT_S = 5.0  # how long a new link gets to be welcomed before its first request


class ClientGone(FleetError):
    """The caller stopped waiting (the HTTP client disconnected): nothing was granted."""


@dataclasses.dataclass
class Held:
    """A granted permit, to be settled exactly once."""

    grant: protocol.Grant
    session: int
    granted_at: float
    settled: bool = False

    @property
    def permit(self) -> str:
        return self.grant.permit

    @property
    def cost(self) -> int:
        return self.grant.cost


class ClientLink:
    """A named client's registration at the broker, shared by the caller's threads."""

    def __init__(
        self,
        address: str,
        name: str,
        *,
        heartbeat_s: float = 1.0,
        liveness: int = 5,
        reconnect_max_s: float = 30.0,
        curve_dir: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._clock = clock
        self.link = BrokerLink(
            address,
            worker_id=name,
            role=protocol.ROLE_CLIENT,
            heartbeat_s=heartbeat_s,
            liveness=liveness,
            reconnect_max_s=reconnect_max_s,
            curve_dir=curve_dir,
            on_kill=self._on_kill,
            clock=clock,
        )
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._waiting = 0

    def start(self, ready_wait_s: float = READY_WAIT_S) -> bool:
        """Start the socket thread; True once a broker has welcomed this client."""
        self.link.start()
        return self.link.wait_ready(ready_wait_s)

    @property
    def ready(self) -> bool:
        return self.link.ready

    def wait_ready(self, timeout: float) -> bool:
        return self.link.wait_ready(timeout)

    @property
    def max_cost(self) -> int:
        """The largest cost the account can ever grant (0 = not known yet)."""
        return self.link.max_cost

    def acquire(
        self,
        cost: int,
        *,
        priority: int = 0,
        wait_s: float = 60.0,
        abandoned: Callable[[], bool] | None = None,
    ) -> Held:
        """Ask for ``cost`` tokens and wait for the grant (see the module docstring)."""
        with self._lock:
            seq = next(self._seq)
        request = protocol.Request(seq=seq, cost=cost, priority=priority, deadline_s=wait_s)
        waiter = self.link.request(request)  # BrokerUnavailable: nothing sent
        self._set_waiting(+1)
        try:
            end = self._clock() + wait_s
            gone = False
            while not waiter.done.is_set():
                remaining = end - self._clock()
                if remaining <= 0:
                    break
                if waiter.done.wait(min(remaining, WAIT_STEP_S)):
                    break
                if abandoned is not None and abandoned():
                    gone = True
                    break
        finally:
            self._set_waiting(-1)
        if not waiter.done.is_set() and self.link.cancel(seq):
            # QUEUED -> CANCELLED at the broker. A GRANT crossing the CANCEL is settled
            # "not_sent" by the link (nobody waits for it any more).
            if gone:
                raise ClientGone(f"the caller left while waiting for {cost} tokens")
            raise PermitTimeout(f"no grant of {cost} tokens within {wait_s:g} s")
        reply = waiter.reply
        if reply is None:
            raise BrokerUnavailable(waiter.gone or "the broker connection was lost")
        if isinstance(reply, protocol.Reject):
            if reply.reason == "deadline":
                raise PermitTimeout(f"no grant of {cost} tokens within {wait_s:g} s (broker)")
            raise PermitRejected(reply.reason, reply.max_cost or self.link.max_cost)
        held = Held(grant=reply, session=waiter.session, granted_at=self._clock())
        if gone or (abandoned is not None and abandoned()):
            # Granted as the caller left: give the tokens back at once.
            self.settle(held, "not_sent")
            raise ClientGone(f"the caller left as {cost} tokens were granted: given back")
        return held

    def settle(
        self,
        held: Held,
        status: str,
        envelope: dict[str, Any] | None = None,
        http_status: int | None = None,
    ) -> None:
        """SETTLE the permit (once: a second call is logged and ignored)."""
        if held.settled:
            log.warning("permit %s settled twice: the second settle is ignored", held.permit)
            return
        held.settled = True
        if not isinstance(http_status, int) or isinstance(http_status, bool):
            http_status = None
        msg = protocol.Settle(
            permit=held.permit, status=status, envelope=envelope, http_status=http_status
        )
        self.link.settle(msg, held.session)
        self.link.work.advance("call", 1)
        took = self._clock() - held.granted_at
        lease = held.grant.lease_ttl_s
        if lease > 0 and took > lease:
            log.warning(
                "client %s: the call under permit %s took %.1f s, longer than its %.1f s "
                "lease: the broker has counted it expired",
                self.name,
                held.permit,
                took,
                lease,
            )

    def close(self, reason: str = "client closed") -> None:
        """Flush the settles, say BYE, end the socket thread."""
        self.link.close(reason)

    def _set_waiting(self, delta: int) -> None:
        with self._lock:
            self._waiting += delta
            waiting = self._waiting > 0
        self.link.work.set_waiting(waiting)

    def _on_kill(self, reason: str) -> None:
        # The broker never sends KILL to a client; if one comes, the link is closed (no
        # more permits) but the program itself is the user's: it is not ended.
        log.error("client %s: the broker closed this link (%s)", self.name, reason)
