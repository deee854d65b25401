"""The broker's answer to each message: the dispatch table and one ``handle_<message>``.

Messages it handles (``common/protocol.py`` has them all), one ``handle_<message>`` each:

=============  =================  =====================================================
message        needs HELLO first  what the broker does
=============  =================  =====================================================
``HELLO``      no                 registers the worker, answers WELCOME
``STATUS``     no                 answers STATUS_REPLY with the whole live state
``HEARTBEAT``  yes                records liveness, progress, stage and pipeline figures
``REQUEST``    yes                GRANT now, later (queued) or REJECT
``CANCEL``     yes                drops the queued request
``SETTLE``     yes                closes the permit; its envelope is an observation (a
                                  permit id over ``MAX_PERMIT_CHARS``: ERROR ``bad_permit``)
``BYE``        yes                the worker is gone; its queued requests are cancelled
=============  =================  =====================================================

Anything else — undecodable frames, wrong frame counts, broker-to-peer message types,
messages from a peer that never said HELLO — is counted in ``bad_messages`` by code and
answered with ERROR (or DISCONNECT: "say HELLO again").
"""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING

from broker import states
from broker.ledger import Ledger, Observation
from broker.permits import PermitBook
from broker.registry import Registry, WorkerRecord
from common import protocol
from common.config import Settings
from common.errors import ProtocolError
from common.keepa import TokenEnvelope
from common.protocol import (
    MAX_DETAIL_CHARS,
    MAX_PERMIT_CHARS,
    ErrorCode,
    RejectReason,
    SettleStatus,
)

if TYPE_CHECKING:
    from typing import Any

    from broker.core import Peer
    from broker.health import FleetHealth
    from broker.permits import Decision

log = logging.getLogger("broker.core")

MAX_SETTLED_IDS = 20_000  # permits whose spend was counted (retried SETTLEs count once)

# Which handler answers which message; everything else is a bad message.
HANDLERS: dict[str, str] = {
    protocol.Hello.TYPE: "handle_hello",
    protocol.Status.TYPE: "handle_status",
    protocol.Heartbeat.TYPE: "handle_heartbeat",
    protocol.Request.TYPE: "handle_request",
    protocol.Cancel.TYPE: "handle_cancel",
    protocol.Settle.TYPE: "handle_settle",
    protocol.Bye.TYPE: "handle_bye",
}
# Messages a peer may send without having said HELLO.
OPEN_MESSAGES = frozenset({protocol.Hello.TYPE, protocol.Status.TYPE})


class Handlers:
    """The ``handle_<message>`` half of ``BrokerCore`` (``broker/core.py``), which holds the
    state declared here and the sends."""

    settings: Settings
    broker_id: str
    ledger: Ledger
    permits: PermitBook
    registry: Registry
    health: FleetHealth
    bad_messages: collections.Counter[str]
    keepa_counts: collections.Counter[str]
    keepa_errors_by_status: collections.Counter[str]
    tokens_spent: int
    tokens_spent_clients: int
    pipeline: dict[str, Any]
    pipeline_from: str
    pipeline_at: float | None
    _settled_ids: collections.OrderedDict[str, None]

    if TYPE_CHECKING:

        def _reply(self, peer: Peer, msg: protocol.Message) -> bool: ...
        def _send_to(
            self, rec: WorkerRecord, msg: protocol.Message | bytes, now: float
        ) -> bool: ...
        def _send_decision(self, decision: Decision, now: float) -> None: ...
        def _queued(self, key: str) -> bool: ...
        def _note_observation(
            self, obs: Observation, now: float, *, already_observed: bool = False
        ) -> None: ...
        def status(self, now: float, *, per_worker: bool = True) -> dict[str, Any]: ...

    # --- handlers -----------------------------------------------------------------------

    def handle_hello(
        self, peer: Peer, rec: WorkerRecord | None, msg: protocol.Hello, now: float
    ) -> None:
        try:
            new, replaced = self.registry.hello(peer.identity, msg, now)
        except ProtocolError as exc:
            self._bad(peer, exc.code, str(exc))
            return
        if replaced is not None:
            self.permits.drop_worker(replaced.key, now)
            log.info(
                "worker %s: a new registration (pid %d) replaces pid %d",
                msg.worker_id,
                msg.pid,
                replaced.pid,
            )
        if rec is not None and rec is not new and rec.worker_id != new.worker_id:
            self.permits.drop_worker(rec.key, now)
        log.info(
            "worker %s registered: %s pid %d, role %s, version %s%s",
            new.worker_id,
            new.host,
            new.pid,
            new.role,
            new.version,
            "" if new.same_host else " (another host: killed by message)",
        )
        self._send_to(
            new,
            protocol.Welcome(
                broker_id=self.broker_id,
                heartbeat_s=self.settings.broker.heartbeat_s,
                liveness=self.settings.broker.liveness,
                lease_ttl_s=self.settings.broker.lease_ttl_s,
                max_cost=self.ledger.max_cost(),
            ),
            now,
        )

    def handle_status(
        self, peer: Peer, rec: WorkerRecord | None, msg: protocol.Status, now: float
    ) -> None:
        self._reply(peer, protocol.StatusReply(self.status(now)))

    def handle_heartbeat(
        self, peer: Peer, rec: WorkerRecord, msg: protocol.Heartbeat, now: float
    ) -> None:
        self.registry.heartbeat(rec, msg, now)
        self.health.worker_storage(rec.worker_id, msg.storage, now)  # its storage's health
        self.registry.set_queued(rec, self._queued(rec.key), now)
        pipeline = rec.info.get("pipeline") if rec.info else None
        if isinstance(pipeline, dict):
            self.pipeline = pipeline
            self.pipeline_from = rec.worker_id
            self.pipeline_at = now

    def handle_request(
        self, peer: Peer, rec: WorkerRecord, msg: protocol.Request, now: float
    ) -> None:
        if rec.state == states.KILLING:
            self._send_to(rec, protocol.Reject(seq=msg.seq, reason=RejectReason.KILLED), now)
            return
        problem = self._check_request(msg)
        if problem:
            self.bad_messages["bad_request"] += 1
            self._send_to(rec, protocol.Reject(seq=msg.seq, reason=problem), now)
            return
        decision = self.permits.submit(
            rec.key, msg.seq, msg.cost, msg.priority, msg.deadline_s, now
        )
        if decision is None:
            self.registry.set_queued(rec, True, now)
            log.debug("worker %s seq %d: %d tokens queued", rec.worker_id, msg.seq, msg.cost)
        else:
            self._send_decision(decision, now)

    def handle_cancel(
        self, peer: Peer, rec: WorkerRecord, msg: protocol.Cancel, now: float
    ) -> None:
        self.permits.cancel(rec.key, msg.seq, now)
        self.registry.set_queued(rec, self._queued(rec.key), now)

    def handle_settle(
        self, peer: Peer, rec: WorkerRecord, msg: protocol.Settle, now: float
    ) -> None:
        if len(msg.permit) > MAX_PERMIT_CHARS:
            # Never one of ours; refused before anything of it is kept (the settled ids).
            self._bad(
                peer, ErrorCode.BAD_PERMIT, f"permit id longer than {MAX_PERMIT_CHARS} characters"
            )
            return
        envelope = self._settle_envelope(peer, msg)
        status = msg.status
        if status not in protocol.SETTLE_STATUSES:
            self.bad_messages["bad_settle_status"] += 1
            status = SettleStatus.ERROR  # unknown outcome: assumed spent
        self._count_keepa_outcome(status, msg.http_status, rec.worker_id)
        rate = envelope.refill_rate if envelope is not None else None
        self.permits.set_closed(self.health.on_call(now, msg.http_status, status, rate))
        obs = (
            Observation.from_envelope(envelope, at=now, source="settle")
            if envelope is not None
            else None
        )
        # The permit book hands the observation to the ledger for a settle of one of this
        # broker's permits (also a late one of an expired permit). A settle it does not know
        # (another worker's, or kept for this broker by a worker whose permit came from an
        # earlier one) is not observed: its figure can be older than calls this broker never
        # saw, and the first grants after a restart must wait for this broker's own /token.
        permit = self.permits.settle(msg.permit, obs, status, now, worker=rec.key)
        if obs is not None and self.ledger.observation is obs:
            self._note_observation(obs, now, already_observed=True)
        if permit is None:
            log.info(
                "SETTLE from %s for permit %s, which is not outstanding (expired, settled "
                "before, another worker's, or from an earlier broker)",
                rec.worker_id,
                msg.permit[:64],
            )
        else:
            log.debug("worker %s settled %s (%s)", rec.worker_id, msg.permit, status)
        rec.settles += 1
        rec.last_call_at = now
        if envelope is not None and msg.permit not in self._settled_ids:
            self._settled_ids[msg.permit] = None
            if len(self._settled_ids) > MAX_SETTLED_IDS:
                self._settled_ids.popitem(last=False)
            rec.tokens_spent += envelope.tokens_consumed
            self.tokens_spent += envelope.tokens_consumed
            if rec.role == protocol.ROLE_CLIENT:
                self.tokens_spent_clients += envelope.tokens_consumed

    def handle_bye(self, peer: Peer, rec: WorkerRecord, msg: protocol.Bye, now: float) -> None:
        self.permits.drop_worker(rec.key, now)
        self.registry.bye(rec, now, msg.reason[:MAX_DETAIL_CHARS])
        log.info("worker %s said BYE (%s)", rec.worker_id, msg.reason[:MAX_DETAIL_CHARS] or "-")

    # --- helpers of the handlers --------------------------------------------------------

    def _check_request(self, msg: protocol.Request) -> str:
        """Why a REQUEST is out of bounds ("" when it is not): ``protocol.request_problem``."""
        return protocol.request_problem(msg) or ""

    def _settle_envelope(self, peer: Peer, msg: protocol.Settle) -> TokenEnvelope | None:
        if msg.envelope is None:
            return None
        try:
            return TokenEnvelope.from_wire(msg.envelope)
        except (ValueError, TypeError) as exc:
            self.bad_messages["bad_envelope"] += 1
            self._reply(peer, protocol.Error(ErrorCode.BAD_ENVELOPE, str(exc)[:MAX_DETAIL_CHARS]))
            return None

    def _count_keepa_outcome(self, status: str, http_status: int | None, worker: str) -> None:
        if http_status == 429:
            self.keepa_counts["status_429"] += 1
            log.warning("worker %s got HTTP 429 from Keepa under a permit", worker)
        if status != SettleStatus.OK and status != SettleStatus.NOT_SENT:
            self.keepa_counts["errors"] += 1
            key = str(http_status) if http_status is not None else str(status)
            if len(self.keepa_errors_by_status) < 64 or key in self.keepa_errors_by_status:
                self.keepa_errors_by_status[key] += 1

    def _unregistered(self, peer: Peer, msg: protocol.Message, now: float) -> None:
        """A message that needs HELLO first, from a peer the broker does not know (also what
        every worker sees once after a broker restart). Nothing in it is used, not even a
        SETTLE's envelope: workers re-send kept settles after their next WELCOME."""
        self.bad_messages["unregistered"] += 1
        self._reply(peer, protocol.Disconnect("unknown worker: send HELLO first"))

    def _bad(self, peer: Peer, code: str, detail: str) -> None:
        code = str(code)
        self.bad_messages[code] += 1
        n = self.bad_messages[code]
        level = logging.WARNING if n & (n - 1) == 0 else logging.DEBUG  # 1, 2, 4, 8, ...
        log.log(
            level, "bad message #%d (%s) from %s: %s", n, code, peer.identity.hex()[:32], detail
        )
        self._reply(peer, protocol.Error(code, detail[:MAX_DETAIL_CHARS]))
