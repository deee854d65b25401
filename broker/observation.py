"""One observation of Keepa's token state: what one response (the broker's ``/token``
call, or a worker's call settled with its envelope) said, and when the broker received it.
The ledger (``broker/ledger.py``) keeps the newest.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from common.keepa import TokenEnvelope

SOURCE_SYNC = "sync"
SOURCE_SETTLE = "settle"


@dataclasses.dataclass(frozen=True)
class Observation:
    """Keepa's token state as one response reported it."""

    keepa_ts_ms: int  # Keepa's ``timestamp``: orders observations (newest wins)
    tokens_left: int
    refill_in_ms: int
    refill_rate: int
    at: float  # the broker's local (monotonic) time when the response was received
    source: str = SOURCE_SYNC  # "sync" (broker /token) or "settle" (a worker's call)
    tokens_consumed: int = 0  # what this response's own call cost
    # For a sync: the local time the /token request was sent (defaults to ``at``). Assumed
    # spends made before it are known to be reflected in the answer.
    sent_at: float | None = None

    @classmethod
    def from_envelope(
        cls, env: TokenEnvelope, at: float, source: str, *, sent_at: float | None = None
    ) -> Observation:
        return cls(
            keepa_ts_ms=env.timestamp_ms,
            tokens_left=env.tokens_left,
            refill_in_ms=env.refill_in_ms,
            refill_rate=env.refill_rate,
            at=at,
            source=source,
            tokens_consumed=env.tokens_consumed,
            sent_at=sent_at,
        )
