"""Helpers of the broker logic tests: observations on a fake clock, a model Keepa account."""

from __future__ import annotations

import dataclasses

from broker.ledger import Observation
from common.keepa import TokenEnvelope

PERIOD_S = 60.0


def obs(
    ts_s: float,
    left: int,
    *,
    refill_in_s: float = 30.0,
    rate: int = 20,
    at: float | None = None,
    source: str = "sync",
    consumed: int = 0,
    sent_at: float | None = None,
) -> Observation:
    """An observation made at Keepa time ``ts_s`` (seconds; the fake clocks of Keepa and the
    broker coincide) and received at ``at`` (default: at once)."""
    return Observation(
        keepa_ts_ms=round(ts_s * 1000),
        tokens_left=left,
        refill_in_ms=round(refill_in_s * 1000),
        refill_rate=rate,
        at=ts_s if at is None else at,
        source=source,
        tokens_consumed=consumed,
        sent_at=sent_at,
    )


@dataclasses.dataclass
class KeepaAccount:
    """Keepa's token bucket as docs/KEEPA.md states it, on an integer millisecond clock."""

    rate: int
    period_ms: int
    balance: int
    next_refill_ms: int
    now_ms: int = 0
    status_429: int = 0
    min_balance: int = 0
    stranger_spent: int = 0

    @property
    def cap(self) -> int:
        return 60 * self.rate

    def advance(self, now_ms: int) -> None:
        assert now_ms >= self.now_ms
        while self.next_refill_ms <= now_ms:
            self.balance = min(self.balance + self.rate, self.cap)
            self.next_refill_ms += self.period_ms
        self.now_ms = now_ms

    def _envelope(self, consumed: int) -> TokenEnvelope:
        return TokenEnvelope(
            timestamp_ms=self.now_ms,
            tokens_left=self.balance,
            refill_in_ms=self.next_refill_ms - self.now_ms,
            refill_rate=self.rate,
            tokens_consumed=consumed,
        )

    def call(self, cost: int) -> tuple[int, TokenEnvelope]:
        """An API call costing ``cost``: (HTTP status, envelope)."""
        if self.balance <= 0:
            self.status_429 += 1
            return 429, self._envelope(0)
        self.balance -= cost
        self.min_balance = min(self.min_balance, self.balance)
        return 200, self._envelope(cost)

    def token(self) -> TokenEnvelope:
        return self._envelope(0)

    def stranger(self, tokens: int) -> None:
        """Another program on the same key spends ``tokens`` (if Keepa lets it)."""
        if self.balance > 0:
            self.balance -= tokens
            self.stranger_spent += tokens
