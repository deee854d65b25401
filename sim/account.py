"""Simulated Keepa token accounts: one per API key, each with its own lock.

The rules (docs/KEEPA.md, "Tokens"):

- ``refill_rate`` tokens are added once per refill period, in one step; the steps fall at
  ``created_at + k × refill_period_s`` (k = 1, 2, ...), so ``refillIn`` is exact.
- At each step ``balance = min(balance + refill_rate, 60 × refill_rate)`` (tokens expire after
  an hour). Steps are applied lazily, from ``now``, whenever the account is touched.
- Acceptance: a request runs when the balance is > 0, whatever it costs, and the full cost is
  deducted (the balance may go negative); at ≤ 0 it is refused (the caller answers 429). The
  check and the deduction happen together under the account lock.

Every method takes ``now`` (epoch seconds) and takes the account lock itself; none sleeps.
"""

from __future__ import annotations

import math
import re
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from common.keepa import TokenEnvelope

KEY_RE = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
UNPAID_PREFIX = "unpaid"
CAP_STEPS = 60  # the balance never exceeds 60 x refill_rate (one hour of refills on Keepa)
REFILL_HISTORY_STEPS = 10_000  # refill_to_first_request_ms keeps this many entries


def valid_key(key: str) -> bool:
    return KEY_RE.match(key) is not None


@dataclass(frozen=True)
class Charge:
    """The outcome of the acceptance rule: accepted or not, and the balance after it."""

    accepted: bool
    tokens_left: int


class Account:
    """One simulated Keepa account."""

    def __init__(
        self,
        number: int,
        *,
        refill_rate: int,
        refill_period_s: float,
        tokens: int | None,
        now: float,
        paid: bool = True,
    ) -> None:
        self.number = number  # logs name accounts by number, never by key
        self.lock = threading.Lock()
        self.paid = paid
        self._plan_rate = refill_rate  # the refill rate while paid (set_paid)
        self.refill_rate = refill_rate if paid else 0
        self.refill_period_s = refill_period_s
        self.created_at = now
        self._steps = 0  # refill steps applied so far
        start = self.cap if tokens is None else tokens
        self.balance = start if paid else 0
        self.min_tokens_left = self.balance
        self.tokens_consumed = 0
        self.external_consumed = 0
        self.lost_to_cap = 0
        self.requests = 0
        self.calls: dict[str, int] = {"token": 0, "product": 0, "deal": 0}  # by route
        self.statuses: dict[int, int] = {}
        self.refill_to_first_request_ms: deque[float] = deque(maxlen=REFILL_HISTORY_STEPS)
        self._last_served_step = 0
        self.last_charged_at: float | None = None  # the latest charged request (epoch s)

    @property
    def label(self) -> str:
        return f"account#{self.number}"

    @property
    def cap(self) -> int:
        return CAP_STEPS * self.refill_rate

    # --- the schedule (callers hold the lock) --------------------------------------------

    def _step_index(self, now: float) -> int:
        return max(0, math.floor((now - self.created_at) / self.refill_period_s))

    def _refill(self, now: float) -> None:
        k = self._step_index(now)
        if k > self._steps:
            # min(b + n*rate, cap) equals n single steps of min(b + rate, cap), also when b is
            # above the cap (set by hand) or far below zero.
            full = self.balance + (k - self._steps) * self.refill_rate
            self.balance = min(full, self.cap)
            # Keepa drops what lies above the cap: refills that found the account full are
            # tokens nobody can spend (a balance set above the cap by hand loses its excess).
            self.lost_to_cap += full - self.balance
            self._steps = k

    def _refill_in_ms(self, now: float) -> int:
        next_step = self.created_at + (self._step_index(now) + 1) * self.refill_period_s
        # Rounded up: timestamp (rounded down) + refillIn is never before the real step.
        return max(1, math.ceil((next_step - now) * 1000.0))

    # --- requests -----------------------------------------------------------------------

    def count_call(self, kind: str) -> None:
        with self.lock:
            self.requests += 1
            self.calls[kind] += 1

    def record_status(self, status: int) -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def _accept(self, now: float, cost: int) -> bool:
        """The acceptance rule (the caller holds the lock): when the balance is > 0, deduct
        the full ``cost`` and return True; otherwise change nothing and return False."""
        self._refill(now)
        if self.balance <= 0:
            return False
        self.balance -= cost
        self.tokens_consumed += cost
        return True

    def try_charge(self, now: float, cost: int) -> Charge:
        """The acceptance rule, atomically, for an API request costing ``cost``."""
        with self.lock:
            if not self._accept(now, cost):
                return Charge(False, self.balance)
            self.min_tokens_left = min(self.min_tokens_left, self.balance)
            if cost > 0:
                self.last_charged_at = now
                k = self._step_index(now)
                if k >= 1 and k > self._last_served_step:
                    step_at = self.created_at + k * self.refill_period_s
                    self.refill_to_first_request_ms.append(round((now - step_at) * 1000.0, 1))
                    self._last_served_step = k
            return Charge(True, self.balance)

    def envelope(self, now: float, consumed: int, processing_ms: int) -> dict[str, Any]:
        """The token fields of a response sent at ``now`` (``tokenFlowReduction`` 0.0)."""
        with self.lock:
            self._refill(now)
            return TokenEnvelope(
                timestamp_ms=int(now * 1000),
                tokens_left=self.balance,
                refill_in_ms=self._refill_in_ms(now),
                refill_rate=self.refill_rate,
                tokens_consumed=consumed,
                processing_time_ms=processing_ms,
            ).to_wire()

    # --- admin --------------------------------------------------------------------------

    def set_plan(self, now: float, refill_rate: int) -> None:
        with self.lock:
            self._refill(now)  # steps before the change used the old rate
            self.refill_rate = refill_rate

    def set_paid(self, now: float, paid: bool) -> None:
        """The subscription lapses (402 from then on, no refills) or is paid again."""
        with self.lock:
            self._refill(now)
            if self.paid and not paid:
                self._plan_rate = self.refill_rate
            self.paid = paid
            self.refill_rate = self._plan_rate if paid else 0

    def set_tokens(self, now: float, tokens: int) -> None:
        with self.lock:
            self._refill(now)
            self.balance = tokens

    def consume_external(self, now: float, tokens: int) -> Charge:
        """Another program spends ``tokens`` on this key: Keepa's acceptance rule applies to it
        too. Counted in ``tokens_consumed`` and ``external_consumed``, not in
        ``min_tokens_left`` (which watches what the API requests did)."""
        with self.lock:
            if not self._accept(now, tokens):
                return Charge(False, self.balance)
            self.external_consumed += tokens
            return Charge(True, self.balance)

    def state(self, now: float) -> dict[str, Any]:
        with self.lock:
            self._refill(now)
            return {
                "account": self.label,
                "paid": self.paid,
                "tokens_left": self.balance,
                "tokens_consumed": self.tokens_consumed,
                "external_consumed": self.external_consumed,
                "tokens_lost_to_cap": self.lost_to_cap,
                "requests": self.requests,
                "status_429": self.statuses.get(429, 0),
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "refill_rate": self.refill_rate,
                "refill_period_s": self.refill_period_s,
                "refill_in_ms": self._refill_in_ms(now),
                "refill_steps": self._steps,
                "cap": self.cap,
                "min_tokens_left": self.min_tokens_left,
                "token_calls": self.calls["token"],
                "product_calls": self.calls["product"],
                "deal_calls": self.calls["deal"],
                "refill_to_first_request_ms": list(self.refill_to_first_request_ms),
                "created_at": self.created_at,
                "last_charged_at": self.last_charged_at,
            }


class Accounts:
    """Every account of the simulator, created on first use of a key."""

    def __init__(self, *, refill_rate: int, refill_period_s: float, tokens: int | None) -> None:
        self.refill_rate = refill_rate
        self.refill_period_s = refill_period_s
        self.tokens = tokens
        self._lock = threading.Lock()
        self._accounts: dict[str, Account] = {}

    def get(self, key: str, now: float) -> Account:
        """The account of a valid key (see ``valid_key``), created full on first use."""
        with self._lock:
            account = self._accounts.get(key)
            if account is None:
                account = Account(
                    len(self._accounts) + 1,
                    refill_rate=self.refill_rate,
                    refill_period_s=self.refill_period_s,
                    tokens=self.tokens,
                    now=now,
                    paid=not key.startswith(UNPAID_PREFIX),
                )
                self._accounts[key] = account
            return account

    def all(self) -> list[Account]:
        with self._lock:
            return list(self._accounts.values())
