"""The token ledger: the broker's one authoritative picture of the shared Keepa balance.

Pure arithmetic with ``now`` passed in (the broker's monotonic clock): no sockets, no sleeps.

The rules it follows, each one the answer to a production failure, are written out in
full in ``docs/ARCHITECTURE.md``, "The token ledger": observations, projection, in flight,
grants, soft floor and recharge, assumed spends and syncs, plan changes, planning
(``earliest_grant_at``) and unaccounted consumption. A change to a rule changes that page.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING, Any

from broker.observation import SOURCE_SETTLE, SOURCE_SYNC, Observation
from common import defaults

if TYPE_CHECKING:
    pass

__all__ = ["SOURCE_SETTLE", "SOURCE_SYNC", "Ledger", "Observation"]

log = logging.getLogger(__name__)

# Keepa's refill step (tests and the simulator shorten it) and the recharge thresholds: the
# defaults of the settings of the same names (common/defaults.py). A ledger built by hand is
# strict about the deficit; a broker passes broker.max_deficit (default defaults.MAX_DEFICIT).
REFILL_PERIOD_S = defaults.REFILL_PERIOD_S
SOFT_FLOOR = defaults.SOFT_FLOOR
RESUME_AT = defaults.RESUME_AT
MAX_DEFICIT = defaults.STRICT_MAX_DEFICIT
CAP_MINUTES = 60  # unused tokens expire after an hour: cap = 60 x refill rate
# How far Keepa's clock may disagree with itself before an observation is treated as bogus.
MAX_CLOCK_SKEW_MS = 60_000
# Suspicious gaps waiting for their in-flight permits to settle, at most (oldest dropped).
MAX_PENDING_GAPS = 256


@dataclasses.dataclass
class _Gap:
    """A suspicious drop waiting for the permits that were in flight to settle."""

    gap: int
    o1_ts_ms: int
    pending: set[str]
    credit: int = 0
    void: bool = False


@dataclasses.dataclass
class _Assumed:
    cost: int
    at: float


class Ledger:
    """The newest Keepa observation, the permits in flight, and what follows from them."""

    def __init__(
        self,
        *,
        refill_period_s: float = REFILL_PERIOD_S,
        soft_floor: int = SOFT_FLOOR,
        resume_at: int = RESUME_AT,
        max_deficit: int = MAX_DEFICIT,
    ) -> None:
        if not refill_period_s > 0 or not math.isfinite(refill_period_s):
            raise ValueError("refill_period_s must be a positive number of seconds")
        if max_deficit < 0:
            raise ValueError("max_deficit must be >= 0")
        self.refill_period_s = float(refill_period_s)
        self.soft_floor = int(soft_floor)
        self.resume_at = int(resume_at)
        self.max_deficit = int(max_deficit)
        self.recharge_mode = False
        self.needs_sync = False
        self.unaccounted = 0
        self.tokens_spent = 0
        self._obs: Observation | None = None
        self._in_flight: dict[str, int] = {}
        self._in_flight_total = 0
        self._assumed: dict[str, _Assumed] = {}
        self._assumed_total = 0
        self._gaps: list[_Gap] = []
        self._offset_ms: float | None = None  # Keepa's clock minus ours, a lower bound
        self.observations_accepted = 0
        self.observations_ignored = 0
        self.plan_changes = 0

    # --- read-only views ------------------------------------------------------------------

    @property
    def has_observation(self) -> bool:
        return self._obs is not None

    @property
    def observation(self) -> Observation | None:
        """The newest observation (None before the first)."""
        return self._obs

    @property
    def refill_rate(self) -> int:
        return self._obs.refill_rate if self._obs is not None else 0

    @property
    def cap(self) -> int:
        return CAP_MINUTES * self.refill_rate

    @property
    def resume_level(self) -> int:
        """Recharge ends when ``available`` reaches this: ``min(resume_at, cap)``."""
        return min(self.resume_at, self.cap)

    @property
    def assumed_spent(self) -> int:
        """Costs assumed spent (expired leases, unknown outcomes) not yet seen by a sync."""
        return self._assumed_total

    @property
    def unaccounted_pending(self) -> int:
        """Suspicious drops still waiting for in-flight permits to settle."""
        return sum(max(0, g.gap - g.credit) for g in self._gaps if not g.void)

    def in_flight(self) -> int:
        """The summed cost of granted, unsettled permits."""
        return self._in_flight_total

    def in_flight_permits(self) -> int:
        return len(self._in_flight)

    def max_cost(self) -> int:
        """The largest cost that can ever be granted (0 before any observation)."""
        cap = self.cap
        if self._obs is None or cap < 1:
            return 0
        return cap + self.max_deficit

    # --- projection -----------------------------------------------------------------------

    def _first_step(self) -> float:
        assert self._obs is not None
        return self._obs.at + max(0, self._obs.refill_in_ms) / 1000.0

    def _step_at(self, j: int) -> float:
        """Local time of refill step ``j`` (0-based) after the newest observation."""
        return self._first_step() + j * self.refill_period_s

    def _steps_by(self, now: float) -> int:
        """How many refill steps happened at or before ``now`` since the newest observation."""
        t0 = self._first_step()
        if now < t0:
            return 0
        j = int((now - t0) // self.refill_period_s)
        # The same expression as _step_at decides, so a wake-up at a returned instant sees it.
        while self._step_at(j + 1) <= now:
            j += 1
        while j > 0 and self._step_at(j) > now:
            j -= 1
        return j + 1

    def _raw(self, now: float) -> int:
        """Keepa's balance now from the newest observation alone (refills and the cap)."""
        obs = self._obs
        if obs is None:
            return 0
        balance = obs.tokens_left
        rate = obs.refill_rate
        if rate > 0:
            steps = self._steps_by(now)
            if steps > 0:
                balance = min(balance + steps * rate, CAP_MINUTES * rate)
        return balance

    def projected(self, now: float) -> int:
        """Keepa's balance now, less the costs assumed spent since the newest observation."""
        return self._raw(now) - self._assumed_total

    def available(self, now: float) -> int:
        return self.projected(now) - self._in_flight_total

    def spare(self, now: float) -> int:
        """Tokens the next refill step would push over the cap, which Keepa drops: what an
        idle fleet loses unless it spends them before that step (0 when it would not).
        Tokens in flight count as spent, so this never overstates what is there to lose."""
        if self._obs is None or self.refill_rate <= 0:
            return 0
        return max(0, self.available(now) + self.refill_rate - self.cap)

    def next_refill_at(self, now: float) -> float | None:
        """The first projected refill step after ``now`` (None before any observation)."""
        if self._obs is None:
            return None
        return self._step_at(self._steps_by(now))

    # --- grants ---------------------------------------------------------------------------

    def refresh(self, now: float) -> None:
        """Bring time-dependent state up to ``now`` (the end of recharge mode). Every method
        that takes ``now`` does this; ``recharge_mode`` read alone may be stale."""
        if self.recharge_mode and self.available(now) >= self.resume_level:
            self.recharge_mode = False
            log.info("recharge over: %d tokens available", self.available(now))

    def can_grant(self, cost: int, now: float) -> bool:
        if self._obs is None or cost < 1:
            return False
        self.refresh(now)
        if self.recharge_mode:
            return False
        available = self.available(now)
        return available > 0 and available - cost >= -self.deficit_now()

    def deficit_now(self, extra_spend: int = 0) -> int:
        """``max_deficit`` while nothing else is in flight or assumed spent (and no
        ``extra_spend``), else 0: two calls that together overdraw could arrive in either
        order, the second at a balance <= 0 (a 429); one alone arrives at a positive one."""
        if extra_spend or self._in_flight_total or self._assumed_total:
            return 0
        return self.max_deficit

    def grant(self, permit: str, cost: int, now: float) -> None:
        """Put a permit in flight. Entering recharge mode does not hold this grant back."""
        if permit in self._in_flight or permit in self._assumed:
            raise ValueError(f"permit {permit} is already known to the ledger")
        if not self.can_grant(cost, now):
            log.error("permit %s of %d tokens granted against the ledger's rules", permit, cost)
        self._in_flight[permit] = cost
        self._in_flight_total += cost
        available = self.available(now)
        if available < self.soft_floor and not self.recharge_mode:
            self.recharge_mode = True
            log.info(
                "recharge: %d tokens available after permit %s, below the soft floor %d; "
                "resuming at %d",
                available,
                permit,
                self.soft_floor,
                self.resume_level,
            )

    def earliest_grant_at(self, cost: int, now: float, *, extra_spend: int = 0) -> float | None:
        """When ``cost`` becomes grantable if nothing else happens and ``extra_spend`` more
        tokens are granted now: ``now`` if it is grantable now, a refill instant, or None
        (never: ``cost > max_cost()``, or no refill). See "Planning" in the module docstring."""
        if self._obs is None or cost < 1 or cost > self.max_cost():
            return None
        available = self.available(now)
        v = available - extra_spend
        resume = self.resume_level
        in_recharge = (self.recharge_mode and available < resume) or (
            extra_spend > 0 and v < self.soft_floor
        )
        # Now, the deficit only for a call alone in flight (``deficit_now``); at a refill
        # instant, what is in flight now has settled (it was treated as spent) and may not
        # stand in the way.
        need_now = max(1, cost - self.deficit_now(extra_spend))
        need = max(1, cost - self.max_deficit)
        if in_recharge:
            need_now, need = max(need_now, resume), max(need, resume)
        if v >= need_now:
            return now
        rate = self.refill_rate
        if rate <= 0 or need > self.cap:
            return None
        steps = max(1, -(-(need - v) // rate))  # ceil; at least the next step
        return self._step_at(self._steps_by(now) + steps - 1)

    # --- observations ---------------------------------------------------------------------

    def observe(self, obs: Observation, now: float) -> bool:
        """Take a Keepa observation. False when it was ignored (older than the newest)."""
        accepted = self._observe(obs, now)
        self.refresh(now)
        return accepted

    def _observe(self, obs: Observation, now: float) -> bool:
        if obs.refill_rate < 0 or obs.refill_in_ms < 0 or obs.refill_in_ms > 10**9:
            log.warning(
                "ignoring an observation with refillRate %d, refillIn %d ms",
                obs.refill_rate,
                obs.refill_in_ms,
            )
            self.observations_ignored += 1
            return False
        is_sync = obs.source == SOURCE_SYNC
        cur = self._obs
        compare = True
        clock_back = False
        if cur is not None and obs.keepa_ts_ms <= cur.keepa_ts_ms:
            sent = obs.sent_at if obs.sent_at is not None else obs.at
            if (
                obs.keepa_ts_ms == cur.keepa_ts_ms
                and obs.tokens_left < cur.tokens_left
                and obs.refill_rate == cur.refill_rate
            ):
                compare = False  # same millisecond, lower balance: the later response
            elif (
                is_sync and cur.keepa_ts_ms - obs.keepa_ts_ms > MAX_CLOCK_SKEW_MS and sent > cur.at
            ):
                log.warning(
                    "Keepa's clock went back %d ms: taking the newer /token answer",
                    cur.keepa_ts_ms - obs.keepa_ts_ms,
                )
                compare = False
                clock_back = True
            else:
                # Older than the newest. A sync still tells that the newest (newer than this
                # answer to a request sent after the assumptions) reflects them.
                if is_sync:
                    self._synced(obs)
                self.observations_ignored += 1
                return False
        elif self._offset_ms is not None and not is_sync:
            keepa_now_ms = now * 1000.0 + self._offset_ms
            if obs.keepa_ts_ms > keepa_now_ms + MAX_CLOCK_SKEW_MS:
                log.warning(
                    "ignoring a settle envelope %d ms ahead of Keepa's clock",
                    int(obs.keepa_ts_ms - keepa_now_ms),
                )
                self.observations_ignored += 1
                return False
        if cur is not None and obs.refill_rate != cur.refill_rate:
            self.plan_changes += 1
            compare = False
            self.needs_sync = True
            log.warning(
                "refill rate changed from %d to %d tokens a step: re-planning",
                cur.refill_rate,
                obs.refill_rate,
            )
        if cur is not None and compare and not self._assumed:
            self._account(cur, obs)
        self._obs = obs
        self.observations_accepted += 1
        # Keepa's clock minus ours, at least: every response is received after it is sent.
        offset = obs.keepa_ts_ms - obs.at * 1000.0
        if self._offset_ms is None or offset > self._offset_ms or clock_back:
            self._offset_ms = offset
        if is_sync:
            self._synced(obs)
        return True

    def _synced(self, obs: Observation) -> None:
        """A sync answer: assumptions made before its request are reflected in the newest.
        ``needs_sync`` stays set while assumptions made later remain."""
        if obs.sent_at is not None:
            cleared = [p for p, a in self._assumed.items() if a.at <= obs.sent_at]
        else:
            cleared = [p for p, a in self._assumed.items() if a.at < obs.at]
        for permit in cleared:
            self._assumed_total -= self._assumed.pop(permit).cost
        self.needs_sync = bool(self._assumed)

    def _account(self, o1: Observation, o2: Observation) -> None:
        """Unaccounted consumption between two consecutive newest observations."""
        rate = o1.refill_rate
        period_ms = self.refill_period_s * 1000.0
        shift = (o2.keepa_ts_ms + o2.refill_in_ms) - (o1.keepa_ts_ms + o1.refill_in_ms)
        steps = max(0, round(shift / period_ms))
        expected = o1.tokens_left
        if steps > 0 and rate > 0:
            expected = min(expected + steps * rate, CAP_MINUTES * rate)
        expected -= max(0, o2.tokens_consumed) + self._in_flight_total
        gap = expected - o2.tokens_left
        if gap <= 0:
            return
        if not self._in_flight:
            self._add_unaccounted(gap)
            return
        self._gaps.append(_Gap(gap=gap, o1_ts_ms=o1.keepa_ts_ms, pending=set(self._in_flight)))
        if len(self._gaps) > MAX_PENDING_GAPS:
            self._gaps.pop(0)

    def _add_unaccounted(self, tokens: int) -> None:
        self.unaccounted += tokens
        log.warning(
            "%d tokens vanished that no fleet permit explains (another program on the key?); "
            "%d in all",
            tokens,
            self.unaccounted,
        )

    def _permit_ended(
        self, permit: str, cost: int, consumed: int | None, ts_ms: int | None
    ) -> None:
        """Resolve the pending gaps that were waiting on ``permit``."""
        if not self._gaps:
            return
        keep: list[_Gap] = []
        for g in self._gaps:
            if permit in g.pending:
                g.pending.discard(permit)
                if consumed is None:
                    g.void = True
                elif ts_ms is None or ts_ms >= g.o1_ts_ms:
                    g.credit += max(0, consumed - cost)
                if not g.pending:
                    if not g.void and g.gap > g.credit:
                        self._add_unaccounted(g.gap - g.credit)
                    continue
            keep.append(g)
        self._gaps = keep

    # --- permit outcomes ------------------------------------------------------------------

    def settle(self, permit: str, obs: Observation | None, now: float) -> None:
        """The call is over. ``obs`` is its envelope (the permit leaves in-flight: the
        envelope includes it); None = outcome unknown: the cost is assumed spent."""
        cost = self._take_in_flight(permit)
        if cost is not None:
            if obs is None:
                self._assume(permit, cost, now)
                self._permit_ended(permit, cost, None, None)
            else:
                self.tokens_spent += obs.tokens_consumed
                self._permit_ended(permit, cost, obs.tokens_consumed, obs.keepa_ts_ms)
                self._observe(obs, now)
        elif permit in self._assumed:
            # A late settle of an expired permit: its call is in any observation at least as
            # new as its envelope, so the assumption goes.
            if obs is not None:
                assumed = self._assumed.pop(permit)
                self._assumed_total -= assumed.cost
                self.tokens_spent += obs.tokens_consumed - assumed.cost
                self._observe(obs, now)
        elif obs is not None:
            self.tokens_spent += obs.tokens_consumed
            self._observe(obs, now)
        self.refresh(now)

    def release(self, permit: str, now: float) -> None:
        """The call never left the worker: nothing was spent."""
        cost = self._take_in_flight(permit)
        if cost is not None:
            self._permit_ended(permit, cost, 0, None)
        elif permit in self._assumed:
            assumed = self._assumed.pop(permit)
            self._assumed_total -= assumed.cost
            self.tokens_spent -= assumed.cost
        self.refresh(now)

    def expire(self, permit: str, now: float) -> None:
        """The lease ran out unsettled: the cost is assumed spent until a sync shows more."""
        cost = self._take_in_flight(permit)
        if cost is not None:
            self._assume(permit, cost, now)
            self._permit_ended(permit, cost, None, None)
        self.refresh(now)

    def _take_in_flight(self, permit: str) -> int | None:
        """Take ``permit`` out of flight: its cost, or None when it was not in flight."""
        cost = self._in_flight.pop(permit, None)
        if cost is not None:
            self._in_flight_total -= cost
        return cost

    def _assume(self, permit: str, cost: int, now: float) -> None:
        self._assumed[permit] = _Assumed(cost=cost, at=now)
        self._assumed_total += cost
        self.tokens_spent += cost
        self.needs_sync = True

    # --- status ---------------------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        self.refresh(now)
        obs = self._obs
        nxt = self.next_refill_at(now)
        return {
            "has_observation": obs is not None,
            "projected": self.projected(now),
            "available": self.available(now),
            "in_flight": self._in_flight_total,
            "in_flight_permits": len(self._in_flight),
            "assumed_spent": self._assumed_total,
            "refill_rate": self.refill_rate,
            "refill_period_s": self.refill_period_s,
            "refill_in_ms": None if nxt is None else max(0, round((nxt - now) * 1000)),
            "cap": self.cap,
            "max_cost": self.max_cost(),
            "recharge_mode": self.recharge_mode,
            "resume_at": self.resume_at,
            "resume_level": self.resume_level,
            "soft_floor": self.soft_floor,
            "max_deficit": self.max_deficit,
            "needs_sync": self.needs_sync,
            "unaccounted": self.unaccounted,
            "unaccounted_pending": self.unaccounted_pending,
            "tokens_spent": self.tokens_spent,
            "tokens_left": None if obs is None else obs.tokens_left,
            "keepa_ts_ms": None if obs is None else obs.keepa_ts_ms,
            "observation_source": None if obs is None else obs.source,
            "observation_age_s": None if obs is None else max(0.0, now - obs.at),
            "observations_accepted": self.observations_accepted,
            "observations_ignored": self.observations_ignored,
            "plan_changes": self.plan_changes,
        }
