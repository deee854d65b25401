"""The broker's live state as one typed, frozen value: ``StatusSnapshot``.

The broker builds it (``broker/snapshot.py``, ``take_snapshot``) and sends ``as_dict()`` as
the STATUS_REPLY body; whoever reads a STATUS_REPLY turns it back with ``from_dict`` (the
fleet runner's progress line, ``common/run.py``). The broker's summary line and its
Prometheus metrics read the same value. A figure added here is added once, for all of them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any


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


@dataclasses.dataclass(frozen=True)
class TokenFigures:
    """The token ledger as the broker sees it now (``ledger`` holds the ledger's own
    snapshot; its keys not named here appear in the dict form as they are)."""

    now: float | None
    available: float | None
    in_flight: int
    refill_rate: int | None
    refill_in_ms: int | None
    cap: int | None
    recharge_mode: bool
    last_sync_age_s: float | None
    last_observation_age_s: float | None
    unaccounted: int
    spent: int
    spent_clients: int
    spent_workers: int
    max_cost: int
    needs_sync: bool
    ledger: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del out["ledger"]
        for key, value in self.ledger.items():
            out.setdefault(key, value)
        return out


@dataclasses.dataclass(frozen=True)
class PermitFigures:
    """The permit book's counters (``PermitBook.stats``)."""

    requested: int
    granted: int
    settled: int
    expired: int
    rejected: int
    rejected_by_reason: Mapping[str, int]
    cancelled: int
    queued: int
    oldest_wait_s: float | None
    mean_wait_s: float
    head_wait_s: float | None
    in_flight: int
    unknown_settles: int
    late_settles: int
    unknown_outcomes: int
    draining: bool

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["rejected_by_reason"] = dict(self.rejected_by_reason)
        return out


@dataclasses.dataclass(frozen=True)
class KeepaFigures:
    token_syncs: int
    sync_errors: int
    status_429: int
    errors: int
    errors_by_status: Mapping[str, int]
    last_error: str
    sync_in_flight: bool

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["errors_by_status"] = dict(self.errors_by_status)
        return out


@dataclasses.dataclass(frozen=True)
class StatusSnapshot:
    broker_id: str
    version: str
    address: str
    pid: int
    host: str
    uptime_s: float
    draining: bool
    # {"state": the key's state, "problems": [{"problem", "says", "since_s", "does"}, ...]}
    # (broker/health.py); read as text by common/health_view.py.
    health: Mapping[str, Any]
    tokens: TokenFigures
    permits: PermitFigures
    workers: tuple[Mapping[str, Any], ...]
    workers_by_state: Mapping[str, int]
    kills: tuple[Mapping[str, Any], ...]
    clients: tuple[Mapping[str, Any], ...]
    kills_by_reason: Mapping[str, int]
    kills_by_action: Mapping[str, int]
    keepa: KeepaFigures
    bad_messages: Mapping[str, int]
    send_failures: int
    loop_turns: int
    pipeline: Mapping[str, Any]
    pipeline_from: str
    pipeline_age_s: float | None
    settings: Mapping[str, Any]

    @property
    def live_workers(self) -> int:
        by_state = self.workers_by_state
        return by_state.get("alive", 0) + by_state.get("waiting", 0)

    def as_dict(self) -> dict[str, Any]:
        """The STATUS_REPLY body (valid JSON too: non-finite floats are None)."""
        state: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, TokenFigures | PermitFigures | KeepaFigures):
                value = value.as_dict()
            elif isinstance(value, tuple):
                value = [dict(v) for v in value]
            elif isinstance(value, Mapping) and f.name != "pipeline":
                value = dict(value)
            state[f.name] = value
        return dict(json_safe(state))

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> StatusSnapshot:
        """A STATUS_REPLY body back into a snapshot (KeyError or TypeError when it is not
        one of this protocol version's)."""
        names = [f.name for f in dataclasses.fields(TokenFigures) if f.name != "ledger"]
        tokens = dict(state["tokens"])
        token_figures = TokenFigures(**{n: tokens.pop(n) for n in names}, ledger=tokens)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = state[f.name]
            if f.name == "tokens":
                value = token_figures
            elif f.name == "permits":
                value = PermitFigures(**value)
            elif f.name == "keepa":
                value = KeepaFigures(**value)
            elif isinstance(value, list):
                value = tuple(value)
            values[f.name] = value
        return cls(**values)


def summary_line(s: StatusSnapshot) -> str:
    """The broker's periodic one-line summary."""
    t, p, k = s.tokens, s.permits, s.keepa
    return (
        f"summary: tokens {t.now}/{t.cap} available {t.available} in flight "
        f"{t.in_flight} rate {t.refill_rate}{' RECHARGE' if t.recharge_mode else ''}"
        f" spent {t.spent} | permits granted {p.granted} settled {p.settled} "
        f"expired {p.expired} rejected {p.rejected} queued {p.queued} | workers "
        f"{s.live_workers} live | /token syncs "
        f"{k.token_syncs} errors {k.errors} 429s {k.status_429} | kills "
        f"{sum(s.kills_by_reason.values())} | bad messages {sum(s.bad_messages.values())}"
    )
