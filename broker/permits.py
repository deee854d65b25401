"""The permit book: queued requests, granted permits, and the order tokens go out in.

Pure bookkeeping over a ``Ledger`` with ``now`` passed in: no sockets, no sleeps. The broker's
loop calls ``submit``/``cancel``/``settle`` on messages, then ``expire_leases`` and
``schedule`` every turn, and sleeps at most until ``next_wakeup``.

Permit lifecycle: ``broker.states.PERMIT``, every change through ``transition``. A closed
book (``set_closed``: the key or Keepa has a problem) rejects, or holds (HELD_WHILE_CLOSED).

Order (priority, then arrival; the *head* reserves, a later request goes ahead only when
that cannot delay it) and retries (``(worker, seq)``: the same answer, never two grants):
docs/ARCHITECTURE.md, "Permits".
"""

from __future__ import annotations

import bisect
import logging
import math
import secrets
from collections import Counter, OrderedDict
from typing import Any

from broker import states
from broker.ledger import Ledger, Observation
from broker.permit_records import Decision, Permit
from common import defaults
from common.lifecycle import transition
from common.protocol import RejectReason, SettleStatus

log = logging.getLogger(__name__)

LEASE_TTL_S = defaults.LEASE_TTL_S
MAX_QUEUED_PER_WORKER = defaults.MAX_QUEUED_PER_WORKER
ANSWERS_PER_WORKER = 64
FINISHED_KEEP_S = 600.0
MAX_FINISHED = 4096

GRANT = "grant"
REJECT = "reject"


# Closed for these reasons the book *holds* requests (Keepa unreachable is usually short);
# for any other (the key has no access, is malformed: usually long) it rejects them.
HELD_WHILE_CLOSED = (RejectReason.KEEPA_UNREACHABLE,)


def _not_later(a: float | None, b: float | None) -> bool:
    """``a <= b`` where None means never."""
    if b is None:
        return True
    return a is not None and a <= b


class PermitBook:
    def __init__(
        self,
        ledger: Ledger,
        *,
        lease_ttl_s: float = LEASE_TTL_S,
        max_queued_per_worker: int = MAX_QUEUED_PER_WORKER,
        id_prefix: str | None = None,
    ) -> None:
        self.ledger = ledger
        self.lease_ttl_s = float(lease_ttl_s)
        self.max_queued_per_worker = int(max_queued_per_worker)
        # A fresh prefix per broker run: a permit id from a previous run never matches.
        self._prefix = id_prefix if id_prefix is not None else secrets.token_hex(4)
        self._next_id = 0
        self._arrivals = 0
        self.draining = False
        self.closed_reason = ""  # not empty: Keepa or the key has a problem (set_closed)
        self._queue: list[tuple[int, int, str]] = []  # (-priority, arrival, permit), sorted
        self._queued: dict[str, Permit] = {}
        self._queued_by_key: dict[tuple[str, int], str] = {}
        self._queued_per_worker: Counter[str] = Counter()
        self._granted: dict[str, Permit] = {}
        self._finished: OrderedDict[str, Permit] = OrderedDict()
        self._answers: dict[str, OrderedDict[int, Decision]] = {}
        self._outbox: list[Decision] = []  # decided by submit() for others; out at schedule()
        self.counts: Counter[str] = Counter()
        self.reject_reasons: Counter[str] = Counter()

    # --- requests -------------------------------------------------------------------------

    def submit(
        self, worker: str, seq: int, cost: int, priority: int, deadline_s: float, now: float
    ) -> Decision | None:
        """A REQUEST. A decision now, or None: queued, the GRANT comes from schedule()."""
        key = (worker, seq)
        if key in self._queued_by_key:
            permit = self._queued[self._queued_by_key[key]]
            if permit.cost == cost:
                return None
            return self._reply_reject(worker, seq, cost, RejectReason.SEQ_REUSED)
        answers = self._answers.get(worker)
        previous = answers.get(seq) if answers is not None else None
        if previous is not None:
            if previous.cost == cost:
                return previous
            return self._reply_reject(worker, seq, cost, RejectReason.SEQ_REUSED)
        if self.draining:
            return self._remember(self._reject_new(worker, seq, cost, RejectReason.DRAINING))
        if self.closed_reason and not self.holding:
            return self._remember(self._reject_new(worker, seq, cost, self.closed_reason))
        if cost <= 0:
            return self._remember(self._reject_new(worker, seq, cost, RejectReason.BAD_COST))
        if not math.isfinite(deadline_s) or deadline_s <= 0:
            return self._remember(self._reject_new(worker, seq, cost, RejectReason.BAD_DEADLINE))
        if self.ledger.has_observation and cost > self.ledger.max_cost():
            return self._remember(self._reject_new(worker, seq, cost, RejectReason.TOO_LARGE))
        if self._queued_per_worker[worker] >= self.max_queued_per_worker:
            return self._remember(self._reject_new(worker, seq, cost, RejectReason.QUEUE_FULL))
        self._next_id += 1
        self._arrivals += 1
        permit = Permit(
            permit=f"{self._prefix}-{self._next_id}",
            worker=worker,
            seq=seq,
            cost=cost,
            priority=priority,
            state=states.QUEUED,
            requested_at=now,
            deadline_at=now + deadline_s,
            granted_at=None,
            lease_until=None,
            settled_at=None,
            arrival=self._arrivals,
        )
        self._queued[permit.permit] = permit
        self._queued_by_key[key] = permit.permit
        self._queued_per_worker[worker] += 1
        bisect.insort(self._queue, (-priority, permit.arrival, permit.permit))
        self.counts["requested"] += 1
        mine: Decision | None = None
        for decision in self._pass(now):
            if decision.permit == permit.permit:
                mine = decision
            else:
                self._outbox.append(decision)
        return mine

    def cancel(self, worker: str, seq: int, now: float) -> None:
        """CANCEL: the requester stopped waiting. A permit already granted is unaffected."""
        permit_id = self._queued_by_key.get((worker, seq))
        if permit_id is None:
            return
        permit = self._dequeue(permit_id)
        # QUEUED -> CANCELLED
        self._finish(permit, states.CANCELLED, RejectReason.CANCELLED, now)
        self.counts["cancelled"] += 1
        self._remember(self._decision(permit, REJECT, RejectReason.CANCELLED))

    def schedule(self, now: float) -> list[Decision]:
        """The grants tokens allow now, and the rejects of requests past their deadline."""
        out = self._outbox
        self._outbox = []
        out.extend(self._pass(now))
        return out

    def _pass(self, now: float) -> list[Decision]:
        out: list[Decision] = []
        ledger = self.ledger
        max_cost = ledger.max_cost() if ledger.has_observation else None
        for _, _, permit_id in list(self._queue):
            permit = self._queued[permit_id]
            reason = ""
            if self.draining:
                reason = RejectReason.DRAINING
            elif self.closed_reason and not self.holding:
                reason = self.closed_reason
            elif now >= permit.deadline_at:
                reason = RejectReason.DEADLINE
            elif max_cost is not None and permit.cost > max_cost:
                reason = RejectReason.TOO_LARGE  # the plan changed under it
            if reason:
                self._dequeue(permit_id)
                # QUEUED -> REJECTED
                self._finish(permit, states.REJECTED, reason, now)
                out.append(self._remember(self._decision(permit, REJECT, reason)))
        # Grants in order until the head; behind it, only what fits in its slack.
        slack: int | None = None
        ledger.refresh(now)
        for _, _, permit_id in list(self._queue):
            if self.closed_reason or ledger.recharge_mode or ledger.available(now) <= 0:
                break
            permit = self._queued[permit_id]
            if slack is not None and permit.cost > slack:
                continue
            if not ledger.can_grant(permit.cost, now):
                if slack is None:
                    slack = self._slack(permit.cost, now)
                continue
            out.append(self._grant(permit, now))
            if slack is not None:
                # Exact: the plan after granting c with x to spare is the plan with c + x.
                slack -= permit.cost
        return out

    def _slack(self, head_cost: int, now: float) -> int:
        """The most tokens that can be granted now without delaying the head's earliest
        grant (``earliest_grant_at`` is monotone in ``extra_spend``: a binary search)."""
        ledger = self.ledger
        head_at = ledger.earliest_grant_at(head_cost, now)
        hi = max(0, ledger.available(now) + ledger.deficit_now())
        if head_at is None:
            return hi  # no refill alone grants the head: nothing now can delay it
        lo = 0  # extra_spend 0 is the plan itself
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _not_later(ledger.earliest_grant_at(head_cost, now, extra_spend=mid), head_at):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _grant(self, permit: Permit, now: float) -> Decision:
        self._dequeue(permit.permit)
        self.ledger.grant(permit.permit, permit.cost, now)
        transition(states.PERMIT, permit, states.GRANTED, logger=log, subject=permit.permit)
        permit.granted_at = now
        permit.lease_until = now + self.lease_ttl_s
        self._granted[permit.permit] = permit
        self.counts["granted"] += 1
        self.counts["wait_ms_total"] += round((now - permit.requested_at) * 1000)
        return self._remember(self._decision(permit, GRANT, ""))

    # --- outcomes -------------------------------------------------------------------------

    def settle(
        self,
        permit: str,
        obs: Observation | None,
        status: str,
        now: float,
        *,
        worker: str | None = None,
    ) -> Permit | None:
        """SETTLE. Feeds ``obs`` to the ledger and returns the settled permit. None (counted)
        for an unknown, foreign or already finished permit, whose ``obs`` the book does not
        observe (the caller may); except that a late settle of an expired permit still
        teaches the ledger what the call cost (a second ``observe`` of it is a no-op)."""
        p = self._granted.get(permit)
        if p is None or (worker is not None and p.worker != worker):
            late = self._finished.get(permit)
            if (
                late is not None
                and late.state == states.EXPIRED
                and (worker is None or late.worker == worker)
            ):
                self.counts["late_settles"] += 1
                if status == SettleStatus.NOT_SENT:
                    self.ledger.release(permit, now)
                elif obs is not None:
                    self.ledger.settle(permit, obs, now)
            else:
                # The caller may still give ``obs`` to the ledger: it is Keepa's word.
                self.counts["unknown_settles"] += 1
            return None
        del self._granted[permit]
        if status == SettleStatus.NOT_SENT:
            self.ledger.release(permit, now)
            if obs is not None:
                self.ledger.observe(obs, now)
        else:
            if obs is None:
                self.counts["unknown_outcomes"] += 1
            self.ledger.settle(permit, obs, now)
        # GRANTED -> SETTLED
        p.settled_at = now
        self._finish(p, states.SETTLED, status, now)
        self.counts["settled"] += 1
        return p

    def expire_leases(self, now: float) -> list[Permit]:
        """GRANTED permits past their lease become EXPIRED; the ledger assumes them spent."""
        expired = [
            p for p in self._granted.values() if p.lease_until is not None and now >= p.lease_until
        ]
        for p in expired:
            del self._granted[p.permit]
            self.ledger.expire(p.permit, now)
            # GRANTED -> EXPIRED
            self._finish(p, states.EXPIRED, "lease", now)
            self.counts["expired"] += 1
            log.warning(
                "permit %s (%d tokens, worker %s) expired unsettled: cost assumed spent",
                p.permit,
                p.cost,
                p.worker,
            )
        self._prune(now)
        return expired

    def drop_worker(self, worker: str, now: float) -> list[Permit]:
        """A dead or departed worker: its queued requests are cancelled and its answers
        forgotten; its granted permits stay until settled or expired."""
        dropped = [
            self._queued[pid] for _, _, pid in self._queue if self._queued[pid].worker == worker
        ]
        for p in dropped:
            self._dequeue(p.permit)
            # QUEUED -> CANCELLED
            self._finish(p, states.CANCELLED, "worker_gone", now)
            self.counts["cancelled"] += 1
        self._answers.pop(worker, None)
        return dropped

    def set_closed(self, reason: str) -> None:
        """Closed with ``reason`` (e.g. ``keepa_no_access``): nothing granted, requests
        rejected with it (or held: HELD_WHILE_CLOSED). '' opens the book again."""
        self.closed_reason = reason

    @property
    def holding(self) -> bool:
        return self.closed_reason in HELD_WHILE_CLOSED

    def set_draining(self, draining: bool) -> None:
        """Draining: new requests are rejected, and queued ones at the next schedule()."""
        self.draining = bool(draining)

    # --- timers and views -----------------------------------------------------------------

    def _head(self, now: float) -> tuple[Permit | None, float | None]:
        """The head (the first queued request, when it cannot be granted now) and its
        earliest grant time, without granting anything. (None, None) when nothing is queued
        or the first request can be granted now."""
        if not self._queue:
            return None, None
        first = self._queued[self._queue[0][2]]
        if self.ledger.can_grant(first.cost, now):
            return None, None
        return first, self.ledger.earliest_grant_at(first.cost, now)

    def next_wakeup(self, now: float) -> float | None:
        """The nearest instant something can change without a message: decisions waiting to
        go out (now), the head's earliest grant (a projected refill instant), the next refill
        when others wait behind the head, the nearest deadline, the nearest lease expiry."""
        if self._outbox:
            return now
        times: list[float] = []
        if self._queue and self.closed_reason:
            times.append(min(p.deadline_at for p in self._queued.values()))  # held: no grant
        elif self._queue:
            head, head_at = self._head(now)
            if head is None:
                times.append(now)  # grantable now: schedule() has work
            else:
                if head_at is not None:
                    times.append(head_at)
                if len(self._queue) > 1:
                    # Requests behind the head may fit at any refill step before its own.
                    nxt = self.ledger.next_refill_at(now)
                    if nxt is not None:
                        times.append(nxt)
            times.append(min(p.deadline_at for p in self._queued.values()))
        leases = [p.lease_until for p in self._granted.values() if p.lease_until is not None]
        if leases:
            times.append(min(leases))
        return min(times) if times else None

    def head_wait_s(self, now: float) -> float | None:
        """How long the head must still wait: None when nothing is queued, 0.0 when the first
        request can be granted now, ``math.inf`` when no refill alone will do it."""
        if not self._queue:
            return None
        head, head_at = self._head(now)
        if head is None:
            return 0.0
        if head_at is None:
            return math.inf
        return max(0.0, head_at - now)

    def held_by_worker(self) -> Counter[str]:
        """Granted, unsettled permits by worker (one pass over them all, for status)."""
        return Counter(p.worker for p in self._granted.values())

    def permits_held(self, worker: str) -> int:
        return self.held_by_worker()[worker]

    def queued_for(self, worker: str) -> int:
        return self._queued_per_worker[worker]

    def permit(self, permit: str) -> Permit | None:
        """A live or recently finished permit."""
        return self._queued.get(permit) or self._granted.get(permit) or self._finished.get(permit)

    def stats(self, now: float) -> dict[str, Any]:
        oldest = min((p.requested_at for p in self._queued.values()), default=None)
        granted = self.counts["granted"]
        return {
            "requested": self.counts["requested"],
            "granted": granted,
            "settled": self.counts["settled"],
            "expired": self.counts["expired"],
            "rejected": self.counts["rejected"],
            "rejected_by_reason": dict(self.reject_reasons),
            "cancelled": self.counts["cancelled"],
            "queued": len(self._queued),
            "oldest_wait_s": None if oldest is None else max(0.0, now - oldest),
            "mean_wait_s": (self.counts["wait_ms_total"] / 1000 / granted) if granted else 0.0,
            "head_wait_s": self.head_wait_s(now),
            "in_flight": len(self._granted),
            "unknown_settles": self.counts["unknown_settles"],
            "late_settles": self.counts["late_settles"],
            "unknown_outcomes": self.counts["unknown_outcomes"],
            "draining": self.draining,
        }

    # --- internals ------------------------------------------------------------------------

    def _dequeue(self, permit_id: str) -> Permit:
        permit = self._queued.pop(permit_id)
        self._queue.remove((-permit.priority, permit.arrival, permit_id))
        del self._queued_by_key[(permit.worker, permit.seq)]
        self._queued_per_worker[permit.worker] -= 1
        if self._queued_per_worker[permit.worker] <= 0:
            del self._queued_per_worker[permit.worker]
        return permit

    def _finish(self, permit: Permit, state: str, reason: str, now: float) -> None:
        transition(states.PERMIT, permit, state, logger=log, subject=permit.permit)
        permit.reason = reason
        permit.finished_at = now
        if state == states.REJECTED:
            self.counts["rejected"] += 1
            self.reject_reasons[reason] += 1
        self._finished[permit.permit] = permit
        self._finished.move_to_end(permit.permit)
        while len(self._finished) > MAX_FINISHED:
            self._finished.popitem(last=False)

    def _prune(self, now: float) -> None:
        while self._finished:
            p = next(iter(self._finished.values()))
            if p.finished_at is not None and now - p.finished_at < FINISHED_KEEP_S:
                break
            self._finished.popitem(last=False)

    def _decision(self, permit: Permit, kind: str, reason: str) -> Decision:
        return Decision(
            kind=kind,
            worker=permit.worker,
            seq=permit.seq,
            permit=permit.permit,
            cost=permit.cost,
            lease_ttl_s=self.lease_ttl_s if kind == GRANT else 0.0,
            reason=reason,
            max_cost=self.ledger.max_cost(),
        )

    def _reject_new(self, worker: str, seq: int, cost: int, reason: str) -> Decision:
        self.counts["rejected"] += 1
        self.reject_reasons[reason] += 1
        return Decision(
            kind=REJECT,
            worker=worker,
            seq=seq,
            permit="",
            cost=cost,
            lease_ttl_s=0.0,
            reason=reason,
            max_cost=self.ledger.max_cost(),
        )

    def _reply_reject(self, worker: str, seq: int, cost: int, reason: str) -> Decision:
        """A reject that is not remembered (the original answer for the seq stays)."""
        log.warning("worker %s reused seq %d with another cost (%d)", worker, seq, cost)
        return self._reject_new(worker, seq, cost, reason)

    def _remember(self, decision: Decision) -> Decision:
        answers = self._answers.setdefault(decision.worker, OrderedDict())
        answers[decision.seq] = decision
        answers.move_to_end(decision.seq)
        while len(answers) > ANSWERS_PER_WORKER:
            answers.popitem(last=False)
        return decision
