"""The broker's core: every decision, no sockets. It takes decoded messages and ``now`` and
sends its answers through one function it is given.

The messages and what each does: ``broker/handlers.py`` (one ``handle_<message>`` each).

``dispatch(frames, now)`` decodes one ROUTER message and calls ``handle``; ``housekeeping(now)``
is the fixed sequence after a turn: finish kills, expire leases, kill silent and stalled
workers, sync with Keepa, schedule grants, heartbeat idle workers, purge, drain.
``poll_timeout_s(now)`` says when the next timer falls due. The socket side
(``broker/transport.py``, ``broker/server.py``) only moves frames and calls these.

``send(frames) -> bool`` puts one message on the wire (False: dropped, a full or gone peer);
``request_sync(reason) -> bool`` asks the /token thread. Driven without sockets (the unit
tests, the fuzzers: ``tests/doubles.py``, ``CoreHarness``)::

    router = FakeRouter()
    core = BrokerCore(settings, send=router.send, clock=lambda: now)
    core.handle(Peer(b"w1"), protocol.Hello(...), now)
    router.take()                   # [(b"w1", Welcome(...))]
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.metadata
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from broker import killer as kills
from broker.handlers import HANDLERS, OPEN_MESSAGES, Handlers
from broker.health import FleetHealth
from broker.killer import Killer, KillTarget
from broker.ledger import Ledger, Observation
from broker.permits import Decision, PermitBook
from broker.registry import Registry, WorkerRecord
from broker.snapshot import StatusSnapshot, summary_line, take_snapshot
from broker.sync import BACKOFF_MAX_S, SyncPolicy, SyncResult
from common import defaults, procinfo, protocol
from common.config import Settings
from common.errors import ProtocolError
from common.protocol import ErrorCode, SettleStatus

if TYPE_CHECKING:
    from broker.metrics import BrokerMetrics

log = logging.getLogger(__name__)

MAX_POLL_S = 1.0  # safety cap of the poll timeout
KILL_CHECK_S = 0.1  # how often a SIGTERMed process is checked for having exited
SUMMARY_EVERY_S = 60.0
DRAIN_TIMEOUT_S = defaults.DRAIN_TIMEOUT_S  # (the default of broker.drain_timeout_s)
MAX_DETAIL_CHARS = protocol.MAX_DETAIL_CHARS
MAX_PERMIT_CHARS = protocol.MAX_PERMIT_CHARS

try:
    VERSION = importlib.metadata.version("keepa-fleet")
except importlib.metadata.PackageNotFoundError:  # running from a bare checkout
    VERSION = "0.0.0"

Send = Callable[[list[bytes]], bool]


@dataclasses.dataclass(frozen=True)
class Peer:
    """Who sent the message being handled: the ROUTER identity, and whether it spoke REQ
    (an empty delimiter frame) so the reply needs one too."""

    identity: bytes
    req: bool = False


class BrokerCore(Handlers):
    """The broker's state and decisions. Touched only by the thread running its loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        send: Send,
        request_sync: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        drain_timeout_s: float | None = None,
        signal_fn: Callable[[int, int], None] = os.kill,
        this_host: str | None = None,
    ) -> None:
        b = settings.broker
        self.settings = settings
        self.clock = clock
        self.wall_clock = wall_clock
        self.version = VERSION
        self.broker_id = uuid.uuid4().hex[:12]
        self.address = b.address  # the transport replaces it by the bound endpoint
        # SIGTERM: how long granted permits get to settle (None: broker.drain_timeout_s).
        self.drain_timeout_s = b.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        self._send = send
        self.sync_requests: collections.deque[str] = collections.deque(maxlen=100)
        self._request_sync = request_sync or self._record_sync
        self.ledger = Ledger(
            refill_period_s=settings.keepa.refill_period_s,
            soft_floor=b.soft_floor,
            resume_at=b.resume_at,
            max_deficit=b.max_deficit,
        )
        self.permits = PermitBook(
            self.ledger, lease_ttl_s=b.lease_ttl_s, max_queued_per_worker=b.max_queued_per_worker
        )
        self.registry = Registry(
            heartbeat_s=b.heartbeat_s,
            liveness=b.liveness,
            stall_s=b.stall_s,
            max_workers=b.max_workers,
            this_host=this_host or procinfo.this_host(),
        )
        self.killer = Killer(grace_s=b.kill_grace_s, send_kill=self._send_kill, signal_fn=signal_fn)
        self.policy = SyncPolicy(
            min_interval_s=b.sync_min_interval_s,
            gap_s=b.sync_gap_s,
            short_wait_s=b.short_wait_s,
            refill_period_s=settings.keepa.refill_period_s,
            backoff_max_s=min(BACKOFF_MAX_S, b.recheck_max_s),  # the key's re-checks
        )
        # The key's and Keepa's state, and the workers' storage (broker/health.py).
        self.health = FleetHealth(recheck_max_s=b.recheck_max_s)
        # Counters shown in status.
        self.bad_messages: collections.Counter[str] = collections.Counter()
        self.keepa_counts: collections.Counter[str] = collections.Counter()
        self.keepa_errors_by_status: collections.Counter[str] = collections.Counter()
        self.send_failures = 0
        self.tokens_spent = 0
        self.tokens_spent_clients = 0  # of tokens_spent: by ROLE_CLIENT peers (the gateway's)
        self.pipeline: dict[str, Any] = {}
        self.pipeline_from: str = ""
        self.pipeline_at: float | None = None
        self.last_keepa_error = ""
        self._settled_ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.last_observation_at: float | None = None
        self.started_at = clock()
        self.summary_at = self.started_at + SUMMARY_EVERY_S
        self.loop_turns = 0
        self.draining = False
        self.drain_deadline: float | None = None
        self._drained = False
        self.metrics: BrokerMetrics | None = None  # when broker.metrics_port is set

    @property
    def drained(self) -> bool:
        return self._drained

    def _record_sync(self, reason: str) -> bool:
        self.sync_requests.append(reason)
        return True

    # --- messages in --------------------------------------------------------------------

    def dispatch(self, frames: list[bytes], now: float) -> bool:
        """Decode one ROUTER message and call its handler (or count it as bad). False when
        it was a registered worker's heartbeat, which leaves nothing for housekeeping."""
        identity = frames[0]
        if len(frames) == 2:
            peer, payload = Peer(identity), frames[1]
        elif len(frames) == 3 and frames[1] == b"":
            peer, payload = Peer(identity, req=True), frames[2]
        else:
            self._bad(Peer(identity), ErrorCode.BAD_FRAMES, f"{len(frames) - 1} frames")
            return True
        try:
            msg = protocol.decode(payload)
        except ProtocolError as exc:
            self._bad(peer, exc.code, str(exc))
            return True
        return self.handle(peer, msg, now)

    def handle(self, peer: Peer, msg: protocol.Message, now: float) -> bool:
        """Handle one decoded message (see ``dispatch`` for the result)."""
        handler_name = HANDLERS.get(msg.TYPE)
        if handler_name is None:
            self._bad(peer, ErrorCode.UNEXPECTED_TYPE, f"{msg.TYPE} is not sent to the broker")
            return True
        rec = self.registry.by_identity(peer.identity)
        if msg.TYPE not in OPEN_MESSAGES:
            if rec is None:
                self._unregistered(peer, msg, now)
                return True
            self.registry.heard_from(rec, now)
        getattr(self, handler_name)(peer, rec, msg, now)
        return not (msg.TYPE == protocol.Heartbeat.TYPE and rec is not None)

    # --- timers -------------------------------------------------------------------------

    def housekeeping(self, now: float) -> None:
        """The fixed sequence after a turn that may need it (see ``Broker.loop_once``)."""
        kills.finish_kills(self.killer, self.registry, now)
        self.permits.expire_leases(now)  # (the permit book logs each one)
        scan = self.registry.scan_due(now)
        if scan:
            kills.detect_and_kill(self.killer, self.registry, self.permits, now)
        if not self.draining:
            self._maybe_sync(now)
        for decision in self.permits.schedule(now):
            self._send_decision(decision, now)
        due = self.registry.heartbeats_due(now) if scan else []
        if due:
            # spare: tokens the next refill would lose to the cap while nothing waits;
            # workers may spend them on work that is not due yet (use it or lose it).
            spare = self.ledger.spare(now) if self.permits.head_wait_s(now) is None else 0
            beat = protocol.Heartbeat(max_cost=self.ledger.max_cost(), spare=spare).encode()
            for rec in due:
                self._send_to(rec, beat, now)  # encoded once for all
        self.registry.purge(now)
        if self.draining and (
            not self._in_flight_count()
            or (self.drain_deadline is not None and now >= self.drain_deadline)
        ):
            self._finish_drain()
        if now >= self.summary_at:
            self.summary_at = now + SUMMARY_EVERY_S
            log.info("%s", self.summary_line(now))
        if self.metrics is not None:
            self.metrics.update(self, now)

    def poll_timeout_s(self, now: float) -> float:
        """Seconds until the nearest timer, capped at MAX_POLL_S."""
        times: list[float] = [now + MAX_POLL_S, self.summary_at]
        wake = self.permits.next_wakeup(now)
        if wake is not None:
            times.append(wake)
        deadline = self.registry.next_deadline()
        if deadline is not None:
            times.append(deadline)
        kill = self.killer.next_deadline()
        if kill is not None:
            times.append(min(kill, now + KILL_CHECK_S))
        if self.drain_deadline is not None:
            times.append(self.drain_deadline)
            if self._in_flight_count():
                times.append(now + KILL_CHECK_S)
        if not self.draining and not self.policy.in_flight:
            if self._sync_reason(now) is not None:
                times.append(self.policy.next_allowed_at)
            recheck = self.health.next_recheck_at()  # the key's state re-checked
            if recheck is not None:
                times.append(max(recheck, self.policy.next_allowed_at))
            gap = self.policy.gap_due_at(self.last_observation_at)
            if gap is not None:
                times.append(gap)
        return max(0.0, min(times) - now)

    # --- messages out -------------------------------------------------------------------

    def _reply(self, peer: Peer, msg: protocol.Message) -> bool:
        frames = [peer.identity, b"", msg.encode()] if peer.req else [peer.identity, msg.encode()]
        return self._send_frames(frames)

    def _send_to(self, rec: WorkerRecord, msg: protocol.Message | bytes, now: float) -> bool:
        """Send a message (or one already encoded) to a registered worker."""
        # Counted as sent even when it failed: a vanished peer is not retried in a hot loop
        # (it goes silent and is handled as such).
        self.registry.sent_to(rec, now)
        return self._send_frames([rec.identity, msg if isinstance(msg, bytes) else msg.encode()])

    def _send_frames(self, frames: list[bytes]) -> bool:
        if self._send(frames):
            return True
        self.send_failures += 1  # the peer's queue is full, or the peer is gone: dropped
        return False

    def _send_kill(self, target: KillTarget, reason: str) -> None:
        self._send_frames(kills.kill_message(target, reason))

    def _send_decision(self, decision: Decision, now: float) -> None:
        rec = self.registry.by_key(decision.worker)
        if decision.kind == "grant":
            permit_id = decision.permit
            grant = protocol.Grant(
                seq=decision.seq,
                permit=permit_id,
                cost=decision.cost,
                lease_ttl_s=decision.lease_ttl_s,
            )
            if rec is None or not rec.live or not self._send_to(rec, grant, now):
                log.info("grant %s could not be delivered: released", permit_id)
                self.permits.settle(permit_id, None, SettleStatus.NOT_SENT, now)
            else:
                rec.grants += 1
                log.debug(
                    "GRANT %s to %s: %d tokens (seq %d)",
                    permit_id,
                    rec.worker_id,
                    decision.cost,
                    decision.seq,
                )
                permit = self.permits.permit(permit_id)
                if self.metrics is not None and permit is not None and permit.granted_at == now:
                    self.metrics.granted(now - permit.requested_at)  # a fresh grant, not a retry
        else:
            reject = protocol.Reject(
                seq=decision.seq, reason=decision.reason, max_cost=decision.max_cost or 0
            )
            if rec is not None and rec.live:
                self._send_to(rec, reject, now)
            log.log(
                # A closed book rejects every retry; the state itself is said once (health).
                logging.DEBUG if decision.reason in protocol.KEEPA_REJECT_REASONS else logging.INFO,
                "REJECT %s seq %d: %s",
                rec.worker_id if rec else decision.worker,
                decision.seq,
                decision.reason,
            )
        if rec is not None:
            self.registry.set_queued(rec, self._queued(rec.key), now)

    def _queued(self, key: str) -> bool:
        return self.permits.queued_for(key) > 0

    # --- ledger and sync ----------------------------------------------------------------

    def _sync_reason(self, now: float) -> str | None:
        has = self.ledger.has_observation
        reason = self.policy.reason(
            now,
            has_observation=has,
            last_observation_at=self.last_observation_at,
            needs_sync=self.ledger.needs_sync,
            head_wait_s=self.permits.head_wait_s(now) if has else None,
            refill_at=self.ledger.next_refill_at(now) if has else None,
        )
        if reason is None and self.health.recheck_due(now):
            reason = "recheck"  # the key or Keepa had a problem: is it over?
        return reason

    def _maybe_sync(self, now: float) -> None:
        reason = self._sync_reason(now)
        if reason is None or not self.policy.may_start(now):
            return
        refill_at = self.ledger.next_refill_at(now) if self.ledger.has_observation else None
        self.policy.started(reason, now, refill_at)
        if reason == "long_wait":
            log.info(
                "the next request would wait %.1f s (> %.1f s): asking Keepa /token first",
                self.permits.head_wait_s(now) or 0.0,
                self.settings.broker.short_wait_s,
            )
        else:
            log.debug("asking Keepa /token (%s)", reason)
        if not self._request_sync(reason):
            self.policy.finished(False, now)

    def _on_sync_result(self, result: SyncResult) -> None:
        self.policy.finished(result.ok, result.at)
        known_problem = self.health.keepa_problem
        # The key's state, and the permit book closed while it is not ok.
        rate = result.envelope.refill_rate if result.envelope is not None else None
        self.permits.set_closed(self.health.on_token(result.at, result.status, result.error, rate))
        if result.envelope is not None:
            obs = Observation.from_envelope(
                result.envelope, at=result.at, source="sync", sent_at=result.started_at
            )
            self._note_observation(obs, result.at)
        if result.ok:
            self.keepa_counts["token_syncs"] += 1
            env = result.envelope
            assert env is not None
            log.info(
                "Keepa /token (%s): %d tokens left, refill %d in %d ms",
                result.reason,
                env.tokens_left,
                env.refill_rate,
                env.refill_in_ms,
            )
        else:
            self.keepa_counts["errors"] += 1
            self.keepa_counts["sync_errors"] += 1
            key = str(result.status) if result.status is not None else "no_response"
            self.keepa_errors_by_status[key] += 1
            self.last_keepa_error = result.error[:MAX_DETAIL_CHARS]
            log.log(
                logging.DEBUG if known_problem else logging.WARNING,  # said once (health)
                "Keepa /token failed (%s): %s; retrying in %.1f s%s",
                result.reason,
                result.error,
                max(0.0, self.policy.next_allowed_at - result.at),
                "" if self.ledger.has_observation else "; no grants until Keepa answers",
            )

    def _note_observation(
        self, obs: Observation, now: float, *, already_observed: bool = False
    ) -> None:
        """Feed an observation to the ledger (unless the permit book already did) and note
        when Keepa's state was last seen (the ledger itself logs plan changes)."""
        if not already_observed:
            self.ledger.observe(obs, now)
        self.last_observation_at = now

    # --- draining -----------------------------------------------------------------------

    def _in_flight_count(self) -> int:
        return self.ledger.in_flight_permits()

    def _start_drain(self, now: float) -> None:
        self.draining = True
        self.drain_deadline = now + self.drain_timeout_s
        self.permits.set_draining(True)
        log.info(
            "draining: rejecting new and queued requests, waiting up to %.1f s for %d "
            "permits in flight to settle",
            self.drain_timeout_s,
            self._in_flight_count(),
        )
        for decision in self.permits.schedule(now):
            self._send_decision(decision, now)

    def _finish_drain(self) -> None:
        if not self._drained:
            left = self._in_flight_count()
            if left:
                log.warning("drain time over with %d permits still in flight; exiting", left)
            else:
                log.info("drained: nothing in flight; exiting")
            self._drained = True

    # --- status -------------------------------------------------------------------------

    def snapshot(self, now: float, *, per_worker: bool = True) -> StatusSnapshot:
        """The whole live state, typed (``broker/snapshot.py``)."""
        return take_snapshot(self, now, per_worker=per_worker)

    def status(self, now: float, *, per_worker: bool = True) -> dict[str, Any]:
        """The whole live state as the STATUS_REPLY dict. ``per_worker=False`` leaves the
        ``workers``, ``kills`` and ``clients`` lists empty."""
        return self.snapshot(now, per_worker=per_worker).as_dict()

    def summary_line(self, now: float) -> str:
        return summary_line(self.snapshot(now, per_worker=False))
