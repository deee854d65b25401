"""The worker process: one work loop running the pipeline stages, one link thread.

One turn of the work loop (``loop_once``): ask every stage its ``urgency(now)``, run
``run_once(now)`` of the most urgent one (role ``all`` has three; a single role has one),
advance the progress counter, go again (after ``EMPTY_TURN_WAIT_S`` when the turn did no
items). When no stage has work, wait ``IDLE_WAIT_S`` on the stop flag (not a busy loop; the
idle turn advances progress too: an idle loop is not a stalled one). While no broker is
connected the loop runs no stage: it waits for the link in bounded waits.

What the loop does when ``run_once`` raises (the loop boundary); in every case the turn
advances the progress counter (the loop is alive, not stalled: a failed call and the backoff
after it must not add up to a stall):

=====================  =======================================================================
exception              what happens
=====================  =======================================================================
BrokerUnavailable      claims given back; the loop waits for the link to reconnect
PermitTimeout          claims given back; next turn at once (it already waited)
PermitRejected         logged (the stage shrinks "too_large" batches itself), claims given
                       back, a short backoff; a reject naming a Keepa problem
                       (``keepa_no_access``...) is said once while it lasts and retried
                       every ``KEEPA_RETRY_S``
a storage failure      (``common.storage_health``, or ``StorageBlocked``: no permit asked)
                       said once by the storage gate (``workers.storage_gate``); the
                       stage gives back what it had not paid for, if the storage lets it,
                       and keeps the rest (ingest: its peeked survivors, committed next);
                       no stage runs until the gate's held writes land (retried with
                       capped backoff, each retry a turn)
anything else          ``log.exception``, claims given back, a backoff doubling from
                       ``ERROR_BACKOFF_MIN_S`` to ``ERROR_BACKOFF_MAX_S`` (no spinning)
=====================  =======================================================================

SIGTERM/SIGINT: the handler only sets the stop flag. The call in hand finishes (a wait for a
grant ends at once with CANCEL), the stage finishes or gives back its batch (``stopping``),
every stage gives back its claims, the settles are flushed, BYE is sent, exit 0. The drain
takes the call in hand (seconds; at most ``keepa.read_timeout_s``) plus the flush
(``workers.link.FLUSH_LINGER_MS``); if the work loop is still busy ``DRAIN_LIMIT_S`` (25 s)
after the signal, a watchdog thread flushes what it can, says BYE and exits with
``EXIT_DRAIN_LIMIT`` (the lease of the call in hand then expires at the broker, which syncs
with Keepa). Both are well within supervisord's ``stopwaitsecs`` (75).

KILL from the broker: the link thread exits the process with ``EXIT_KILLED`` even when the
work loop is stuck; supervisord (``autorestart=true``) starts a new one.

Test-only fault (off unless set): ``FLEET_WORKER_FAULT=hang_after:N`` makes the work loop
hang for good (``FAULT_HANG_LIMIT_S`` at most) after N turns while the link thread keeps
heartbeating with a frozen progress counter: what a deadlocked stage looks like. The fault
suite (``tests/faults``) uses it to show the broker finding and killing a stalled worker.
Never set it in production; the worker logs a warning at start when it is set.

Exit codes (``keepa-fleet worker``):

=====================  ====  ================================================================
name                   code  meaning
=====================  ====  ================================================================
``EXIT_OK``            0     stopped by SIGTERM/SIGINT after draining
``EXIT_FAILURE``       1     an unexpected error at start
``EXIT_DRAIN_LIMIT``   70    SIGTERM, but the work loop did not finish within DRAIN_LIMIT_S
``EXIT_STORAGE``       73    the database cannot be opened or created (checked before the
                             worker connects to the broker: no token is spent in a crash loop)
``EXIT_KILLED``        75    KILL from the broker (restart me)
``EXIT_CONFIG``        78    bad settings (``common.cli``)
=====================  ====  ================================================================
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING

from common import protocol
from common.errors import (
    BrokerUnavailable,
    ConfigError,
    KeepaConnectionError,
    KeepaError,
    KeepaTimeout,
    PermitRejected,
    PermitTimeout,
)
from common.say_once import SayOnce
from workers.link import BrokerLink
from workers.permit_client import STOP_CHECK_S, BrokerPermitClient
from workers.storage_gate import storage_problem

if TYPE_CHECKING:
    from common.config import Settings
    from workers.stages import Stage

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_DRAIN_LIMIT = 70  # sysexits EX_SOFTWARE
EXIT_STORAGE = 73  # sysexits EX_CANTCREAT
EXIT_KILLED = 75  # sysexits EX_TEMPFAIL: supervisord restarts the worker
EXIT_CONFIG = 78  # sysexits EX_CONFIG (returned by common.cli)

IDLE_WAIT_S = 1.0  # no stage has work: look again after this (at once on SIGTERM)
EMPTY_TURN_WAIT_S = 0.05  # a turn that did no items: a short pause (a stage that claims
# urgency but never does anything must not spin a core)
LINK_WAIT_S = 1.0  # one bounded wait for the broker per turn
ERROR_BACKOFF_MIN_S = 0.5
ERROR_BACKOFF_MAX_S = 10.0
DRAIN_LIMIT_S = 25.0  # SIGTERM -> exit, at most (supervisord's stopwaitsecs is 75)
CLOSE_TIMEOUT_S = 5.0  # flushing settles and BYE, then joining the link thread
WATCHDOG_TICK_S = 1.0
IDLE_STAGE = "idle"
STORAGE_STAGE = "storage"  # a turn spent retrying held writes (workers.storage_gate)
KEEPA_RETRY_S = 1.0  # after a reject naming a Keepa problem: ask again this soon
MIN_RETRY_S = 0.05
FAULT_ENV = "FLEET_WORKER_FAULT"  # test-only fault injection, see the module docstring
FAULT_HANG_LIMIT_S = 600.0  # even an injected hang ends


def parse_fault(value: str | None) -> int | None:
    """The N of ``hang_after:N`` (None when unset or empty); ConfigError otherwise."""
    if not value:
        return None
    kind, _, count = value.partition(":")
    if kind == "hang_after" and count.isdigit():
        return int(count)
    raise ConfigError(FAULT_ENV, f"{value!r} is not hang_after:N (a test-only fault)")


class WorkerRuntime:
    """The work loop. ``serve()`` runs it until the stop flag; tests call ``loop_once``."""

    def __init__(
        self,
        stages: Sequence[Stage],
        permits: BrokerPermitClient,
        stop: threading.Event,
        *,
        clock: Callable[[], float] = time.time,
        idle_wait_s: float = IDLE_WAIT_S,
        drain_limit_s: float = DRAIN_LIMIT_S,
        exit_process: Callable[[int], object] = os._exit,
        hang_after: int | None = None,
    ) -> None:
        self.stages = list(stages)
        self.permits = permits
        self.link: BrokerLink = permits.link
        self.stop = stop
        self.stop_reason = ""
        self.clock = clock
        self.idle_wait_s = idle_wait_s
        self.drain_limit_s = drain_limit_s
        self._exit = exit_process
        self._errors = 0
        self._finished = threading.Event()
        self._waiting_logged = False
        self._keepa_say = SayOnce(log, "permits")  # rejects naming a Keepa problem
        self._keepa_kinds: set[str] = set()  # kinds of Keepa failure said in this one
        self.hang_after = hang_after  # test-only fault: hang after this many turns
        self.turns = 0

    # --- signals ------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only flags here; the loop acts on them.
        if not self.stop_reason:
            self.stop_reason = signal.Signals(signum).name
        self.stop.set()

    # --- the loop -----------------------------------------------------------------------

    def serve(self) -> int:
        """Run until the stop flag, then drain. The link must have been started."""
        watchdog = threading.Thread(target=self._drain_watchdog, name="drain-watchdog")
        watchdog.daemon = True
        watchdog.start()
        try:
            while not self.stop.is_set():
                if not self.link.ready:
                    self._wait_for_link()
                    continue
                wait_s = self.loop_once(self.clock())
                self.turns += 1
                if self.hang_after is not None and self.turns >= self.hang_after:
                    self._injected_hang()
                if wait_s > 0:
                    self.stop.wait(wait_s)
        finally:
            self.shutdown(self.stop_reason or "stopping")
            self._finished.set()
        return EXIT_OK

    def pick(self, now: float) -> Stage | None:
        """The stage with the highest urgency above 0 (the first on a tie), or None."""
        best: Stage | None = None
        best_urgency = 0.0
        for stage in self.stages:
            urgency = stage.urgency(now)
            if urgency > best_urgency:
                best, best_urgency = stage, urgency
        return best

    def loop_once(self, now: float) -> float:
        """One turn. Returns how long to wait on the stop flag before the next (0: none)."""
        try:
            stage = self.pick(now)
        except Exception:
            log.exception("choosing the next stage failed")
            return self._error_backoff()
        gate = getattr(self.permits, "gate", None)  # issue 12: workers.storage_gate
        if gate is not None and gate.blocked and not gate.recover(now):
            self.permits.advance(STORAGE_STAGE)  # a turn that ended: progress
            return max(MIN_RETRY_S, gate.retry_in_s(now))
        if stage is None:
            self.permits.advance(IDLE_STAGE)
            return self.idle_wait_s
        self.permits.set_stage(stage.name)
        try:
            items = stage.run_once(now)
        except BrokerUnavailable as exc:
            log.warning("%s: no broker (%s): batch given back", stage.name, exc)
            self._give_back(stage)
            self.permits.advance(stage.name)  # a turn that ended is progress (see below)
            return 0.0
        except PermitTimeout as exc:
            level = logging.INFO if self.stop.is_set() else logging.WARNING
            log.log(level, "%s: %s: batch given back", stage.name, exc)
            self._give_back(stage)
            self.permits.advance(stage.name)
            return 0.0
        except PermitRejected as exc:
            if exc.reason in protocol.KEEPA_REJECT_REASONS:
                self._keepa_say.failing(
                    self.clock(),
                    exc.reason,
                    f"the broker grants nothing; asking every {KEEPA_RETRY_S} s",
                )
                self._give_back(stage)
                self.permits.advance(stage.name)
                return KEEPA_RETRY_S
            log.warning(
                "%s: permit rejected (%s, max cost %d): batch given back",
                stage.name,
                exc.reason,
                exc.max_cost,
            )
            self._give_back(stage)
            self.permits.advance(stage.name)
            return self._error_backoff()
        except Exception as exc:
            # A turn can last minutes (a permit wait, a Keepa call): what follows is timed
            # from now, not from the turn's start (the wait would be that much too long, and
            # a worker asleep past the stall limit is killed as stalled).
            after = self.clock()
            if gate is not None and gate.failed(exc, after):
                # Said once by the gate; no permit is asked until a write succeeds. The stage
                # gave back what it could itself and keeps what it paid for (ingest's
                # survivors): not given back here.
                self.permits.advance(stage.name)
                return max(MIN_RETRY_S, gate.retry_in_s(after))
            keepa_problem = _keepa_problem(exc)
            if keepa_problem:
                # Keepa's answer names a problem the broker now knows too: said once (and
                # each other kind of failure once while it lasts: new information).
                kind = type(exc).__name__
                began = self._keepa_say.failing(after, keepa_problem, f"{stage.name}: {exc}")
                if not began and kind not in self._keepa_kinds:
                    log.info("%s: also %s", stage.name, exc)
                self._keepa_kinds.add(kind)
                self._give_back(stage)
                self.permits.advance(stage.name)
                return min(KEEPA_RETRY_S, self._error_backoff())
            log.exception("%s: the batch failed: given back", stage.name)
            self._give_back(stage)
            # The loop is not stuck: it finished a turn and backs off on purpose. Without
            # this, a Keepa call timing out plus the backoff that follows counts as a
            # frozen progress counter, and the broker kills the worker as stalled.
            self.permits.advance(stage.name)
            return self._error_backoff()
        self._errors = 0
        if items and self._keepa_say.ok(self.clock(), "permits granted again"):
            self._keepa_kinds.clear()
        self.permits.advance(stage.name)
        log.debug("%s: %s items", stage.name, items)
        return 0.0 if items else EMPTY_TURN_WAIT_S

    def shutdown(self, reason: str) -> None:
        """Give back every stage's claims, flush the settles, say BYE, close the link."""
        log.info("stopping (%s): giving back claims, settling, saying BYE", reason)
        for stage in self.stages:
            self._give_back(stage)
        self.link.close(bye_reason=reason, timeout_s=CLOSE_TIMEOUT_S)

    # --- helpers ------------------------------------------------------------------------

    def _wait_for_link(self) -> None:
        if not self._waiting_logged:
            log.info("waiting for the broker at %s: no stage runs meanwhile", self.link.address)
            self._waiting_logged = True
        end = time.monotonic() + LINK_WAIT_S
        while not self.stop.is_set() and time.monotonic() < end:
            if self.link.wait_ready(STOP_CHECK_S):
                self._waiting_logged = False
                return

    def _give_back(self, stage: Stage) -> None:
        try:
            stage.give_back()
        except Exception as exc:
            if storage_problem(exc) is not None:
                # The storage gate says it once; the claims expire by themselves.
                log.debug("%s: giving back its claims failed: %s", stage.name, exc)
                return
            log.exception(
                "%s: giving back its claims failed (they expire by themselves)", stage.name
            )

    def _error_backoff(self) -> float:
        self._errors += 1
        return min(ERROR_BACKOFF_MAX_S, ERROR_BACKOFF_MIN_S * 2 ** (self._errors - 1))

    def _injected_hang(self) -> None:
        """The test-only fault: block like a deadlock (the stop flag is not looked at)."""
        self.hang_after = None
        log.warning(
            "%s: the work loop hangs now after %d turns (a test-only fault); heartbeats go on",
            FAULT_ENV,
            self.turns,
        )
        threading.Event().wait(FAULT_HANG_LIMIT_S)

    def _drain_watchdog(self) -> None:
        while not self._finished.is_set():
            if self.stop.wait(WATCHDOG_TICK_S):
                break
        else:
            return
        if self._finished.wait(self.drain_limit_s):
            return
        log.error(
            "the work loop did not finish within %.0f s of %s: exiting now; the lease of the "
            "call in hand expires at the broker",
            self.drain_limit_s,
            self.stop_reason or "the stop signal",
        )
        self.link.close(bye_reason="drain limit", timeout_s=CLOSE_TIMEOUT_S)
        self._exit(EXIT_DRAIN_LIMIT)


def _keepa_problem(exc: BaseException) -> str:
    """The reject reason a failed Keepa call means (the broker closes its permit book on
    it, ``broker.keepa_state``), or '' for an error of the call itself."""
    if not isinstance(exc, KeepaError):
        return ""
    if exc.status == 402:
        return protocol.REJECT_KEEPA_NO_ACCESS
    if isinstance(exc, KeepaTimeout | KeepaConnectionError) or (exc.status or 0) >= 500:
        return protocol.REJECT_KEEPA_UNREACHABLE
    return ""


def run_worker(
    settings: Settings,
    *,
    worker_id: str,
    role: str,
    make_stages: Callable[[BrokerPermitClient], Sequence[Stage]],
    install_signals: bool = True,
    exit_process: Callable[[int], object] = os._exit,
) -> int:
    """Build the link, the permit client and the stages; run until SIGTERM or KILL."""
    stop = threading.Event()
    hang_after = parse_fault(os.environ.get(FAULT_ENV))
    if hang_after is not None:
        log.warning("%s is set: this worker will hang after %d turns", FAULT_ENV, hang_after)

    def on_kill(reason: str) -> None:
        exit_process(EXIT_KILLED)

    link = BrokerLink(
        settings.broker.address,
        worker_id=worker_id,
        role=role,
        heartbeat_s=settings.broker.heartbeat_s,
        liveness=settings.broker.liveness,
        reconnect_max_s=settings.worker.reconnect_max_s,
        curve_dir=settings.broker.curve_dir,
        on_kill=on_kill,
    )
    permits = BrokerPermitClient(link, stop=stop, grant_wait_s=settings.worker.grant_wait_s)
    try:
        stages = make_stages(permits)
    except BaseException:
        link.close()
        raise
    runtime = WorkerRuntime(stages, permits, stop, exit_process=exit_process, hang_after=hang_after)
    if install_signals:
        runtime.install_signal_handlers()
    log.info(
        "worker %s (role %s, pid %d): stages %s; broker %s",
        worker_id,
        role,
        os.getpid(),
        ", ".join(s.name for s in stages) or "none",
        settings.broker.address,
    )
    link.start()
    return runtime.serve()
