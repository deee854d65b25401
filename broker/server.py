"""The broker actor: one ZeroMQ ROUTER, one poller loop, the token ledger's only owner.

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
answered with ERROR (or DISCONNECT: "say HELLO again"); the loop goes on.

One loop turn (``loop_once``): poll with the nearest timer as timeout (permit book wake-up,
heartbeat due, silence or stall deadline, kill grace, sync due, summary line; never
infinite, never more than ``MAX_POLL_S``), dispatch what arrived, then the fixed
housekeeping: finish kills, expire leases, kill silent and stalled workers, sync with Keepa,
schedule grants, heartbeat idle workers, purge, drain. The ``/token`` call runs in
``broker.sync``'s thread; its answer arrives on an inproc socket in the same poller.

Run it with ``Broker(settings).serve(stop)`` (the CLI), or in a thread for tests::

    broker = Broker(settings, keepa_client=None, clock=time.monotonic)
    thread, stop = broker.start_thread()      # returns once bound, sync thread running
    ... broker.address ...                    # the actual endpoint (tcp://HOST:0 -> a port)
    broker.begin_drain()                      # optional: what SIGTERM does
    broker.stop(); broker.join(10)            # sockets closed when join returns True

or ``with running_broker(settings, keepa_client=fake) as broker: ...``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import importlib.metadata
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, cast

import zmq

from broker import states
from broker.health import FleetHealth
from broker.killer import Killer, KillTarget
from broker.ledger import Ledger, Observation
from broker.metrics import BrokerMetrics
from broker.permits import Decision, PermitBook
from broker.registry import Registry, WorkerRecord
from broker.sync import BACKOFF_MAX_S, SyncPolicy, SyncResult, TokenSource, TokenSync
from common import procinfo, protocol
from common.config import Settings
from common.curve import require_curve_for, setup_server
from common.errors import ProtocolError
from common.keepa import KeepaClient, TokenEnvelope

log = logging.getLogger(__name__)

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

MAX_POLL_S = 1.0  # safety cap of the poll timeout
KILL_CHECK_S = 0.1  # how often a SIGTERMed process is checked for having exited
SUMMARY_EVERY_S = 60.0
DRAIN_TIMEOUT_S = 5.0  # SIGTERM: how long granted permits get to settle
SPIN_LIMIT = 100  # zero-timeout turns in a row with no message before the floor applies
SPIN_FLOOR_S = 0.01
MAX_BATCH = 500  # messages dispatched per turn before housekeeping runs
MAX_TRANSPORT_BYTES = 1024 * 1024  # larger frames are dropped by ZeroMQ itself
MAX_SEQ = 2**63 - 1
MAX_COST = 10**9
MAX_PRIORITY = 10**6
MAX_DEADLINE_S = 7 * 86400.0
MAX_DETAIL_CHARS = 200
MAX_SETTLED_IDS = 20_000  # permits whose spend was counted (retried SETTLEs count once)
# Longest permit id a SETTLE may carry (ours are "<8 hex>-<n>"): the ids of settled permits
# are kept (MAX_SETTLED_IDS), so their size must be bounded too.
MAX_PERMIT_CHARS = 64
MAX_KILLS_SHOWN = 50
SETTLE_STATUSES = frozenset(
    {"ok", "http_error", "timeout", "connection_error", "error", "not_sent"}
)

try:
    VERSION = importlib.metadata.version("keepa-fleet")
except importlib.metadata.PackageNotFoundError:  # running from a bare checkout
    VERSION = "0.0.0"


@dataclasses.dataclass(frozen=True)
class Peer:
    """Who sent the message being handled: the ROUTER identity, and whether it spoke REQ
    (an empty delimiter frame) so the reply needs one too."""

    identity: bytes
    req: bool = False


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None (``math.inf`` = "never"), so the state is
    valid JSON as well as msgpack."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _bind_address(address: str) -> str:
    """``tcp://HOST:0`` means any free port, as ZeroMQ spells it (``tcp://HOST:*``)."""
    if address.startswith("tcp://") and address.endswith(":0"):
        return address[:-1] + "*"
    return address


class Broker:
    """The broker actor. Its state is touched only by the thread running its loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        keepa_client: TokenSource | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
        signal_fn: Callable[[int, int], None] = os.kill,
        this_host: str | None = None,
    ) -> None:
        b = settings.broker
        require_curve_for(b.address, b.curve_dir)
        self.settings = settings
        self.clock = clock
        self.wall_clock = wall_clock
        self.broker_id = uuid.uuid4().hex[:12]
        self.address = b.address  # replaced by the bound endpoint in initialize()
        self.drain_timeout_s = drain_timeout_s
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
            backoff_max_s=min(BACKOFF_MAX_S, b.recheck_max_s),  # issue 12: re-checks
        )
        self.health = FleetHealth(recheck_max_s=b.recheck_max_s)  # issue 12 (broker.health)
        self._keepa_client = keepa_client
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
        self._last_observation_at: float | None = None
        # Loop state.
        self._ctx: zmq.Context[Any] | None = None
        self._router: zmq.Socket[Any] | None = None
        self._poller = zmq.Poller()
        self._sync: TokenSync | None = None
        self._auth: Any = None
        self._wake_r, self._wake_w = -1, -1
        self._started_at = 0.0
        self._summary_at = 0.0
        self._idle_spins = 0
        self._due_at = float("-inf")  # the nearest timer, as of the latest housekeeping
        self.loop_turns = 0
        self._drain_requested = threading.Event()
        self._draining = False
        self._drain_deadline: float | None = None
        self._drained = False
        self._stop: threading.Event | None = None
        self._started = threading.Event()
        self._stopped = threading.Event()
        self._start_error: BaseException | None = None
        self.metrics: BrokerMetrics | None = None  # when broker.metrics_port is set

    # --- lifecycle ----------------------------------------------------------------------

    def initialize(self) -> None:
        """Bind the ROUTER, start the sync thread. Call from the thread that runs the loop."""
        b = self.settings.broker
        self._ctx = zmq.Context()
        router = self._ctx.socket(zmq.ROUTER)
        router.linger = 0
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        router.setsockopt(zmq.MAXMSGSIZE, MAX_TRANSPORT_BYTES)
        if b.curve_dir:
            self._auth = setup_server(self._ctx, router, b.curve_dir)
        try:
            router.bind(_bind_address(b.address))
        except zmq.ZMQError:
            router.close(linger=0)
            self._close_context()
            raise
        self._router = router
        endpoint = router.getsockopt(zmq.LAST_ENDPOINT)
        self.address = endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)
        self._sync = TokenSync(self._ctx, self._client_factory, self.clock)
        self._sync.start()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller.register(router, zmq.POLLIN)
        self._poller.register(self._sync.socket, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)
        now = self.clock()
        self._started_at = now
        self._summary_at = now + SUMMARY_EVERY_S
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
        if self._router is not None:
            self._router.close(linger=0)
            self._router = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if sync_stopped:
            self._close_context()
        else:
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
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"!")

    @property
    def drained(self) -> bool:
        return self._drained

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

    def _close_context(self) -> None:
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # --- the loop -----------------------------------------------------------------------

    def loop_once(self, now: float | None = None) -> None:
        """One turn: poll (nearest timer), dispatch, housekeeping."""
        assert self._router is not None and self._sync is not None, "initialize() first"
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
        events = dict(self._poller.poll(math.ceil(timeout_s * 1000)))
        self.loop_turns += 1
        self._idle_spins = self._idle_spins + 1 if due_s == 0 and not events else 0
        now = self.clock()
        if self._wake_r in events:
            with contextlib.suppress(BlockingIOError, OSError):
                while os.read(self._wake_r, 4096):
                    pass
        if self._drain_requested.is_set() and not self._draining:
            self._start_drain(now)
        if self._sync.socket in events:
            for result in self._sync.results():
                self._on_sync_result(result)
        # Housekeeping runs when a timer fell due or a message may have changed what it acts
        # on. A turn that carried only heartbeats changes neither (their timers are renewed
        # by the registry's scans), and skipping it there is most of the broker's cost with
        # hundreds of workers heartbeating.
        housekeep = bool(events.keys() - {self._router}) or due_s == 0
        if self._router in events:
            for n in range(MAX_BATCH):
                # (Asking EVENTS is cheaper than the zmq.Again raised by a recv on empty.)
                if n and not cast(int, self._router.get(zmq.EVENTS)) & zmq.POLLIN:
                    break
                try:
                    frames = self._router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    if self.dispatch(frames, now):
                        housekeep = True
                except Exception:  # one message's boundary: count it, keep serving
                    housekeep = True
                    self.bad_messages["internal_error"] += 1
                    log.exception("handling a message failed")
        now = self.clock()
        if housekeep or self._draining or now >= self._due_at:
            self.housekeeping(now)
            self._due_at = now + self.poll_timeout_s(now)
        elif self.registry.deadline_stale:  # a heartbeat started a timer (a stall's)
            self._due_at = min(self._due_at, now + self.poll_timeout_s(now))

    def poll_timeout_s(self, now: float) -> float:
        """Seconds until the nearest timer, capped at MAX_POLL_S."""
        times: list[float] = [now + MAX_POLL_S, self._summary_at]
        wake = self.permits.next_wakeup(now)
        if wake is not None:
            times.append(wake)
        deadline = self.registry.next_deadline()
        if deadline is not None:
            times.append(deadline)
        kill = self.killer.next_deadline()
        if kill is not None:
            times.append(min(kill, now + KILL_CHECK_S))
        if self._drain_deadline is not None:
            times.append(self._drain_deadline)
            if self._in_flight_count():
                times.append(now + KILL_CHECK_S)
        if not self._draining and not self.policy.in_flight:
            if self._sync_reason(now) is not None:
                times.append(self.policy.next_allowed_at)
            recheck = self.health.next_recheck_at()  # issue 12: the key's state re-checked
            if recheck is not None:
                times.append(max(recheck, self.policy.next_allowed_at))
            gap = self.policy.gap_due_at(self._last_observation_at)
            if gap is not None:
                times.append(gap)
        return max(0.0, min(times) - now)

    def dispatch(self, frames: list[bytes], now: float) -> bool:
        """Decode one ROUTER message and call its handler (or count it as bad). False when
        it was a registered worker's heartbeat, which leaves nothing for housekeeping."""
        identity = frames[0]
        if len(frames) == 2:
            peer, payload = Peer(identity), frames[1]
        elif len(frames) == 3 and frames[1] == b"":
            peer, payload = Peer(identity, req=True), frames[2]
        else:
            self._bad(peer=Peer(identity), code="bad_frames", detail=f"{len(frames) - 1} frames")
            return True
        try:
            msg = protocol.decode(payload)
        except ProtocolError as exc:
            self._bad(peer, exc.code, str(exc))
            return True
        handler_name = HANDLERS.get(msg.TYPE)
        if handler_name is None:
            self._bad(peer, "unexpected_type", f"{msg.TYPE} is not sent to the broker")
            return True
        rec = self.registry.by_identity(identity)
        if msg.TYPE not in OPEN_MESSAGES:
            if rec is None:
                self._unregistered(peer, msg, now)
                return True
            self.registry.heard_from(rec, now)
        getattr(self, handler_name)(peer, rec, msg, now)
        return not (msg.TYPE == protocol.Heartbeat.TYPE and rec is not None)

    def housekeeping(self, now: float) -> None:
        """The fixed sequence after a turn that may need it (see loop_once)."""
        for record in self.killer.tick(now):
            rec = self.registry.by_key(record.key)
            if rec is not None and rec.state == states.KILLING:
                self.registry.mark_gone(rec, now, f"killed ({record.reason}, {record.outcome})")
        self.permits.expire_leases(now)  # (the permit book logs each one)
        scan = self.registry.scan_due(now)
        if scan:
            for rec, reason in self.registry.check(now, self._queued):
                self._kill(rec, reason, now)
        if not self._draining:
            self._maybe_sync(now)
        for decision in self.permits.schedule(now):
            self._send_decision(decision, now)
        due = self.registry.heartbeats_due(now) if scan else []
        if due:
            # "spare": tokens the next refill would lose to the cap while nothing waits —
            # workers may spend them on work that is not due yet (use it or lose it).
            spare = self.ledger.spare(now) if self.permits.head_wait_s(now) is None else 0
            info = {"max_cost": self.ledger.max_cost(), "spare": spare}
            beat = protocol.Heartbeat(info=info).encode()
            for rec in due:
                self._send_to(rec, beat, now)  # encoded once for all
        self.registry.purge(now)
        if self._draining and (
            not self._in_flight_count()
            or (self._drain_deadline is not None and now >= self._drain_deadline)
        ):
            self._finish_drain()
        if now >= self._summary_at:
            self._summary_at = now + SUMMARY_EVERY_S
            log.info("%s", self.summary_line(now))
        if self.metrics is not None:
            self.metrics.update(self, now)

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
        self.health.worker_storage(rec.worker_id, msg.storage, now)  # issue 12
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
            self._send_to(rec, protocol.Reject(seq=msg.seq, reason="killed"), now)
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
            self._bad(peer, "bad_permit", f"permit id longer than {MAX_PERMIT_CHARS} characters")
            return
        envelope = self._settle_envelope(peer, msg)
        status = msg.status
        if status not in SETTLE_STATUSES:
            self.bad_messages["bad_settle_status"] += 1
            status = "error"  # unknown outcome: assumed spent
        self._count_keepa_outcome(status, msg.http_status, rec.worker_id)
        rate = envelope.refill_rate if envelope is not None else None
        self.permits.set_closed(self.health.on_call(now, msg.http_status, status, rate))  # 12
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
        if not 0 <= msg.seq <= MAX_SEQ:
            return "bad_seq"
        if not 1 <= msg.cost <= MAX_COST:
            return "bad_cost"
        if not -MAX_PRIORITY <= msg.priority <= MAX_PRIORITY:
            return "bad_priority"
        if not (math.isfinite(msg.deadline_s) and 0 < msg.deadline_s <= MAX_DEADLINE_S):
            return "bad_deadline"
        return ""

    def _settle_envelope(self, peer: Peer, msg: protocol.Settle) -> TokenEnvelope | None:
        if msg.envelope is None:
            return None
        try:
            return TokenEnvelope.from_wire(msg.envelope)
        except (ValueError, TypeError) as exc:
            self.bad_messages["bad_envelope"] += 1
            self._reply(peer, protocol.Error("bad_envelope", str(exc)[:MAX_DETAIL_CHARS]))
            return None

    def _count_keepa_outcome(self, status: str, http_status: int | None, worker: str) -> None:
        if http_status == 429:
            self.keepa_counts["status_429"] += 1
            log.warning("worker %s got HTTP 429 from Keepa under a permit", worker)
        if status != "ok" and status != "not_sent":
            self.keepa_counts["errors"] += 1
            key = str(http_status) if http_status is not None else status
            if len(self.keepa_errors_by_status) < 64 or key in self.keepa_errors_by_status:
                self.keepa_errors_by_status[key] += 1

    def _unregistered(self, peer: Peer, msg: protocol.Message, now: float) -> None:
        """A message that needs HELLO first, from a peer the broker does not know (also what
        every worker sees once after a broker restart). Nothing in it is used, not even a
        SETTLE's envelope: workers re-send kept settles after their next WELCOME."""
        self.bad_messages["unregistered"] += 1
        self._reply(peer, protocol.Disconnect("unknown worker: send HELLO first"))

    def _bad(self, peer: Peer, code: str, detail: str) -> None:
        self.bad_messages[code] += 1
        n = self.bad_messages[code]
        level = logging.WARNING if n & (n - 1) == 0 else logging.DEBUG  # 1, 2, 4, 8, ...
        log.log(
            level, "bad message #%d (%s) from %s: %s", n, code, peer.identity.hex()[:32], detail
        )
        self._reply(peer, protocol.Error(code, detail[:MAX_DETAIL_CHARS]))

    # --- sending ------------------------------------------------------------------------

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
        assert self._router is not None
        try:
            self._router.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self.send_failures += 1  # the peer's queue is full: dropped
            return False
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                log.warning("send failed: %s", exc)
            self.send_failures += 1  # the peer is gone
            return False
        return True

    def _send_kill(self, target: KillTarget, reason: str) -> None:
        self._send_frames([target.identity, protocol.Kill(reason).encode()])

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
                self.permits.settle(permit_id, None, "not_sent", now)
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
                # issue 12: a closed book rejects every retry; the state itself is said once
                logging.DEBUG if decision.reason in protocol.KEEPA_REJECT_REASONS else logging.INFO,
                "REJECT %s seq %d: %s",
                rec.worker_id if rec else decision.worker,
                decision.seq,
                decision.reason,
            )
        if rec is not None:
            self.registry.set_queued(rec, self._queued(rec.key), now)

    # --- ledger and sync ----------------------------------------------------------------

    def _sync_reason(self, now: float) -> str | None:
        has = self.ledger.has_observation
        reason = self.policy.reason(
            now,
            has_observation=has,
            last_observation_at=self._last_observation_at,
            needs_sync=self.ledger.needs_sync,
            head_wait_s=self.permits.head_wait_s(now) if has else None,
            refill_at=self.ledger.next_refill_at(now) if has else None,
        )
        if reason is None and self.health.recheck_due(now):
            reason = "recheck"  # issue 12: the key or Keepa had a problem; is it over?
        return reason

    def _maybe_sync(self, now: float) -> None:
        assert self._sync is not None
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
        try:
            self._sync.request(reason)
        except zmq.ZMQError as exc:
            log.error("cannot reach the /token thread: %s", exc)
            self.policy.finished(False, now)

    def _on_sync_result(self, result: SyncResult) -> None:
        self.policy.finished(result.ok, result.at)
        known_problem = self.health.keepa_problem
        # issue 12: the key's state, and the permit book closed while it is not ok.
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
        self._last_observation_at = now

    # --- kills --------------------------------------------------------------------------

    def _queued(self, key: str) -> bool:
        return self.permits.queued_for(key) > 0

    def _kill(self, rec: WorkerRecord, reason: str, now: float) -> None:
        if rec.role == protocol.ROLE_CLIENT:
            self._forget_client(rec, reason, now)
            return
        if reason == states.KILL_SILENT:
            why = f"silent for {now - rec.last_seen:.1f} s"
        else:
            why = f"progress frozen at {rec.progress} for {now - rec.progress_at:.1f} s"
        log.warning(
            "worker %s (pid %d on %s) is %s: %s", rec.worker_id, rec.pid, rec.host, reason, why
        )
        self.permits.drop_worker(rec.key, now)
        self.registry.mark_killing(rec, now)
        record = self.killer.kill(rec, reason, now)
        if record.done_at is not None:
            self.registry.mark_gone(rec, now, f"not killed ({record.action})")

    def _forget_client(self, rec: WorkerRecord, reason: str, now: float) -> None:
        """A client program (ROLE_CLIENT) fell silent: never signalled (it is the user's
        process), only forgotten. Its queued requests are cancelled; its granted permits
        stay in flight until settled or their lease expires."""
        log.warning(
            "client %s (pid %d on %s) is %s for %.1f s: forgotten, not killed",
            rec.worker_id,
            rec.pid,
            rec.host,
            reason,
            now - rec.last_seen,
        )
        self.permits.drop_worker(rec.key, now)
        self.registry.mark_gone(rec, now, f"client {reason}")

    def _clients_status(self, now: float) -> list[dict[str, Any]]:
        """The ROLE_CLIENT peers (gateway clients, permit API scripts): name, state, queued
        requests, permits delivered and held, tokens spent, age of the last settled call."""
        held = self.permits.held_by_worker()
        return [
            {
                "id": rec.worker_id,
                "host": rec.host,
                "pid": rec.pid,
                "state": rec.state,
                "waiting": self.permits.queued_for(rec.key),
                "granted": rec.grants,
                "permits_held": held[rec.key],
                "tokens_spent": rec.tokens_spent,
                "settles": rec.settles,
                "last_call_age_s": (
                    round(now - rec.last_call_at, 3) if rec.last_call_at is not None else None
                ),
                "gone_reason": rec.gone_reason,
            }
            for rec in self.registry.records()
            if rec.role == protocol.ROLE_CLIENT
        ]

    # --- draining -----------------------------------------------------------------------

    def _in_flight_count(self) -> int:
        return self.ledger.in_flight_permits()

    def _start_drain(self, now: float) -> None:
        self._draining = True
        self._drain_deadline = now + self.drain_timeout_s
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

    def status(self, now: float, *, per_worker: bool = True) -> dict[str, Any]:
        """The whole live state (STATUS_REPLY, the status tool). ``per_worker=False`` leaves
        the ``workers`` and ``kills`` lists empty: the figures only, which is all the
        metrics and the summary line read, without a dict per worker every time."""
        has = self.ledger.has_observation
        snapshot = self.ledger.snapshot(now)
        tokens: dict[str, Any] = {
            "now": self.ledger.projected(now) if has else None,
            "available": self.ledger.available(now) if has else None,
            "in_flight": self.ledger.in_flight(),
            "refill_rate": snapshot.get("refill_rate"),
            "refill_in_ms": snapshot.get("refill_in_ms"),
            "cap": snapshot.get("cap"),
            "recharge_mode": self.ledger.recharge_mode,
            "last_sync_age_s": (
                round(now - self.policy.last_success_at, 3)
                if self.policy.last_success_at is not None
                else None
            ),
            "last_observation_age_s": (
                round(now - self._last_observation_at, 3)
                if self._last_observation_at is not None
                else None
            ),
            "unaccounted": self.ledger.unaccounted,
            "spent": self.tokens_spent,
            "spent_clients": self.tokens_spent_clients,
            "spent_workers": self.tokens_spent - self.tokens_spent_clients,
            "max_cost": self.ledger.max_cost(),
            "needs_sync": self.ledger.needs_sync,
        }
        for key, value in snapshot.items():
            tokens.setdefault(key, value)
        b = self.settings.broker
        state = {
            "broker_id": self.broker_id,
            "version": VERSION,
            "address": self.address,
            "pid": os.getpid(),
            "host": self.registry.this_host,
            "uptime_s": round(now - self._started_at, 3),
            "draining": self._draining,
            "health": self.health.status(now),  # issue 12
            "tokens": tokens,
            "permits": self.permits.stats(now),
            "workers": self._workers_status(now) if per_worker else [],
            "workers_by_state": self.registry.counts_by_state(),
            "kills": self._kills_status(now) if per_worker else [],
            "clients": self._clients_status(now) if per_worker else [],
            "kills_by_reason": dict(self.killer.by_reason),
            "kills_by_action": dict(self.killer.by_action),
            "keepa": {
                "token_syncs": self.keepa_counts["token_syncs"],
                "sync_errors": self.keepa_counts["sync_errors"],
                "status_429": self.keepa_counts["status_429"],
                "errors": self.keepa_counts["errors"],
                "errors_by_status": dict(self.keepa_errors_by_status),
                "last_error": self.last_keepa_error,
                "sync_in_flight": self.policy.in_flight,
            },
            "bad_messages": dict(self.bad_messages),
            "send_failures": self.send_failures,
            "loop_turns": self.loop_turns,
            "pipeline": self.pipeline,
            "pipeline_from": self.pipeline_from,
            "pipeline_age_s": (
                round(now - self.pipeline_at, 3) if self.pipeline_at is not None else None
            ),
            "settings": {
                "heartbeat_s": b.heartbeat_s,
                "liveness": b.liveness,
                "stall_s": b.stall_s,
                "kill_grace_s": b.kill_grace_s,
                "lease_ttl_s": b.lease_ttl_s,
                "soft_floor": b.soft_floor,
                "resume_at": b.resume_at,
                "max_deficit": b.max_deficit,
                "refill_period_s": self.settings.keepa.refill_period_s,
            },
        }
        return dict(json_safe(state))

    def _workers_status(self, now: float) -> list[dict[str, Any]]:
        held = self.permits.held_by_worker()
        return [
            {
                "id": rec.worker_id,
                "host": rec.host,
                "pid": rec.pid,
                "role": rec.role,
                "version": rec.version,
                "state": rec.state,
                "state_age_s": round(now - rec.state_since, 3),
                "heartbeat_age_s": round(now - rec.last_seen, 3),
                "progress": rec.progress,
                "progress_age_s": round(now - rec.progress_at, 3),
                "waiting": rec.waiting,
                "permits_held": held[rec.key],
                "queued": self.permits.queued_for(rec.key),
                "tokens_spent": rec.tokens_spent,
                "settles": rec.settles,
                "stage": rec.stage,
                "items_done": rec.items_done,
                "gone_reason": rec.gone_reason,
            }
            for rec in self.registry.records()
        ]

    def _kills_status(self, now: float) -> list[dict[str, Any]]:
        wall = self.wall_clock()
        return [k.as_dict(now, wall) for k in list(self.killer.history)[-MAX_KILLS_SHOWN:]]

    def summary_line(self, now: float) -> str:
        s = self.status(now, per_worker=False)
        t, p, k = s["tokens"], s["permits"], s["keepa"]
        by_state = s["workers_by_state"]
        return (
            f"summary: tokens {t['now']}/{t['cap']} available {t['available']} in flight "
            f"{t['in_flight']} rate {t['refill_rate']}{' RECHARGE' if t['recharge_mode'] else ''}"
            f" spent {t['spent']} | permits granted {p['granted']} settled {p['settled']} "
            f"expired {p['expired']} rejected {p['rejected']} queued {p['queued']} | workers "
            f"{by_state.get('alive', 0) + by_state.get('waiting', 0)} live | /token syncs "
            f"{k['token_syncs']} errors {k['errors']} 429s {k['status_429']} | kills "
            f"{sum(s['kills_by_reason'].values())} | bad messages {sum(s['bad_messages'].values())}"
        )


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
