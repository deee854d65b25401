"""The permit client: how the stages spend tokens (``PermitClient``) and its implementation
over the broker link (``BrokerPermitClient``).

``call(cost, fn)`` is the only way a stage makes a Keepa call that costs tokens::

    REQUEST(seq, cost, priority, deadline) --> wait on the link (never a blind sleep)
        GRANT   --> fn() --> SETTLE(permit, status, envelope, http_status) --> response
        REJECT  --> PermitRejected(reason, max_cost)   ("deadline": PermitTimeout)
        nothing by the deadline, or the worker stopping --> CANCEL --> PermitTimeout
        broker gone, DISCONNECT, no broker at all --> BrokerUnavailable (fn never runs)

Once granted, the call is always settled, whatever ``fn`` does:

==================================================  ====================  ===============
what ``fn`` did                                     SETTLE status         envelope
==================================================  ====================  ===============
returned a KeepaResponse                            ``ok``                the response's
raised KeepaError with ``sent`` False (or any       ``not_sent``          its own, if any
exception carrying ``sent = False``)
raised KeepaTimeout                                 ``timeout``           its own, if any
raised KeepaConnectionError                         ``connection_error``  its own, if any
raised KeepaBadResponse                             ``error``             its own, if any
raised another KeepaError (400/402/405/429/5xx)     ``http_error``        its own (429s)
raised anything else                                ``error``             none
==================================================  ====================  ===============

An exception the client cannot tell was raised before the request left counts as ``error``
(outcome unknown, the cost assumed spent: the safe side). Then the exception is re-raised.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from common import defaults, protocol
from common.errors import (
    BrokerUnavailable,
    KeepaBadResponse,
    KeepaConnectionError,
    KeepaError,
    KeepaTimeout,
    PermitRejected,
    PermitTimeout,
)
from common.keepa import KeepaResponse
from common.protocol import RejectReason, SettleStatus
from workers.link import BrokerLink, Waiter

log = logging.getLogger(__name__)

DEFAULT_GRANT_WAIT_S = defaults.GRANT_WAIT_S  # the default of settings.worker.grant_wait_s
STOP_CHECK_S = 0.1  # while waiting for a grant, how often the stop flag is looked at


class PermitClient(Protocol):
    """What the stages use to spend tokens and to show their progress."""

    def call(
        self,
        cost: int,
        fn: Callable[[], KeepaResponse],
        *,
        priority: int = 0,
        deadline_s: float | None = None,
    ) -> KeepaResponse:
        """Ask for a permit of ``cost`` tokens, wait for GRANT, run ``fn`` (the Keepa HTTP
        call), always settle, and return the response or re-raise what ``fn`` raised.

        Raises BrokerUnavailable (no live broker: ``fn`` is not called), PermitRejected
        (REJECT; ``max_cost`` with "too_large") or PermitTimeout (no grant by the deadline,
        default ``worker.grant_wait_s``; CANCEL is sent)."""
        ...

    def max_cost(self) -> int:
        """The largest cost the broker says the account can ever grant; 0 = unknown."""
        ...

    def spare(self) -> int:
        """Tokens the next refill would lose to the cap while nothing waits (the broker's
        latest word); work that is not due may spend them. 0 = none, or unknown."""
        ...

    def advance(self, stage: str, items: int = 0) -> None:
        """The work loop's progress: counter +1, current stage, items done += items."""
        ...

    def report(self, info: dict[str, Any]) -> None:
        """Figures shown in status (sent with the heartbeats; keep them small)."""
        ...

    @property
    def stopping(self) -> bool:
        """SIGTERM received: finish or give back the batch in hand."""
        ...


def settle_status(exc: BaseException) -> tuple[str, dict[str, Any] | None, int | None]:
    """(status, envelope on the wire, http_status) of a call that raised ``exc``."""
    envelope = getattr(exc, "envelope", None) if isinstance(exc, KeepaError) else None
    wire = _wire(envelope)
    http_status = getattr(exc, "status", None) if isinstance(exc, KeepaError) else None
    if getattr(exc, "sent", True) is False:
        return SettleStatus.NOT_SENT, wire, http_status
    if isinstance(exc, KeepaTimeout):
        return SettleStatus.TIMEOUT, wire, http_status
    if isinstance(exc, KeepaConnectionError):
        return SettleStatus.CONNECTION_ERROR, wire, http_status
    if isinstance(exc, KeepaBadResponse):
        return SettleStatus.ERROR, wire, http_status
    if isinstance(exc, KeepaError) and http_status is not None:
        return SettleStatus.HTTP_ERROR, wire, http_status
    return SettleStatus.ERROR, wire, http_status


def _wire(envelope: Any) -> dict[str, Any] | None:
    to_wire = getattr(envelope, "to_wire", None)
    if to_wire is None:
        return None
    try:
        wire = to_wire()
    except Exception:  # a broken envelope must not stop the settle
        log.exception("could not put the token envelope on the wire")
        return None
    return wire if isinstance(wire, dict) else None


class BrokerPermitClient:
    """``PermitClient`` over a ``BrokerLink``. Used by one work loop (one thread)."""

    def __init__(
        self,
        link: BrokerLink,
        *,
        stop: threading.Event,
        grant_wait_s: float = DEFAULT_GRANT_WAIT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link = link
        self._stop = stop
        self.grant_wait_s = grant_wait_s
        self._clock = clock
        self._seq = itertools.count(1)
        # issue 12: workers.storage_gate.StorageGate (set by gate_storage); None: no gate.
        self.gate: Any = None

    @property
    def worker_id(self) -> str:
        """The worker's name: the stages name their database claims with it."""
        return self.link.worker_id

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def max_cost(self) -> int:
        return self.link.max_cost

    def spare(self) -> int:
        return self.link.spare()

    def advance(self, stage: str, items: int = 0) -> None:
        self.link.work.advance(stage, items)

    def report(self, info: dict[str, Any]) -> None:
        self.link.work.report(info)

    def set_stage(self, stage: str) -> None:
        """The stage the work loop runs now (shown in heartbeats; not progress)."""
        self.link.work.set_stage(stage)

    def call(
        self,
        cost: int,
        fn: Callable[[], KeepaResponse],
        *,
        priority: int = 0,
        deadline_s: float | None = None,
    ) -> KeepaResponse:
        if self.stopping:
            raise PermitTimeout("the worker is stopping: no new permits")
        if self.gate is not None:
            self.gate.ready()  # issue 12: StorageBlocked unless this worker can write
        wait_s = self.grant_wait_s if deadline_s is None else deadline_s
        seq = next(self._seq)
        request = protocol.Request(seq=seq, cost=cost, priority=priority, deadline_s=wait_s)
        waiter = self.link.request(request)  # BrokerUnavailable: fail closed, fn not called
        self.link.work.set_waiting(True)
        try:
            grant = self._await_grant(waiter, cost, wait_s)
        finally:
            self.link.work.set_waiting(False)
        return self._run_granted(grant, waiter.session, fn)

    def _await_grant(self, waiter: Waiter, cost: int, wait_s: float) -> protocol.Grant:
        end = self._clock() + wait_s
        stopped = False
        while not waiter.done.is_set():
            remaining = end - self._clock()
            if remaining <= 0:
                break
            if waiter.done.wait(min(remaining, STOP_CHECK_S)):
                break
            if self._stop.is_set():
                stopped = True
                break
        if not waiter.done.is_set() and self.link.cancel(waiter.seq):
            # Still outstanding: CANCEL sent. A GRANT crossing it is settled "not_sent" by
            # the link (nobody waits for it any more).
            if stopped:
                raise PermitTimeout(f"the worker is stopping: request for {cost} tokens cancelled")
            raise PermitTimeout(f"no grant of {cost} tokens within {wait_s:g} s")
        reply = waiter.reply
        if reply is None:
            raise BrokerUnavailable(waiter.gone or "the broker connection was lost")
        if isinstance(reply, protocol.Reject):
            if reply.reason == RejectReason.DEADLINE:
                raise PermitTimeout(f"no grant of {cost} tokens within {wait_s:g} s (broker)")
            raise PermitRejected(reply.reason, reply.max_cost or self.link.max_cost)
        return reply  # (a grant that crossed the cancel is used: it arrived)

    def _run_granted(
        self, grant: protocol.Grant, session: int, fn: Callable[[], KeepaResponse]
    ) -> KeepaResponse:
        started = self._clock()
        try:
            resp = fn()
        except BaseException as exc:
            status, envelope, http_status = settle_status(exc)
            self._settle(grant.permit, status, envelope, http_status, session)
            self._check_lease(grant, started)
            raise
        envelope = getattr(resp, "envelope", None)
        self._settle(
            grant.permit, SettleStatus.OK, _wire(envelope), getattr(resp, "status", None), session
        )
        self._check_lease(grant, started)
        return resp

    def _settle(
        self,
        permit: str,
        status: str,
        envelope: dict[str, Any] | None,
        http_status: int | None,
        session: int,
    ) -> None:
        if not isinstance(http_status, int) or isinstance(http_status, bool):
            http_status = None
        msg = protocol.Settle(
            permit=permit, status=status, envelope=envelope, http_status=http_status
        )
        self.link.settle(msg, session)

    def _check_lease(self, grant: protocol.Grant, started: float) -> None:
        took = self._clock() - started
        if grant.lease_ttl_s > 0 and took > grant.lease_ttl_s:
            log.warning(
                "the call under permit %s took %.1f s, longer than its %.1f s lease: the "
                "broker has counted it expired",
                grant.permit,
                took,
                grant.lease_ttl_s,
            )
