"""The broker's live state as one typed, frozen value.

``take_snapshot(core, now)`` reads the core once and returns a ``StatusSnapshot``; everything that
shows the state reads that: ``as_dict()`` is the STATUS_REPLY body (the status tool, the
gateway, tests), ``summary_line`` is the broker's periodic log line, and ``broker.metrics``
copies its figures into Prometheus. A figure added here is added once, for all of them.
``per_worker=False`` leaves the per-worker lists empty (the figures only: what the metrics
and the summary line need, without a dict per worker every time).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from common import protocol

if TYPE_CHECKING:
    from broker.core import BrokerCore

MAX_KILLS_SHOWN = 50


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


def take_snapshot(core: BrokerCore, now: float, *, per_worker: bool = True) -> StatusSnapshot:
    """Read the core's whole live state once."""
    ledger = core.ledger
    has = ledger.has_observation
    lsnap = ledger.snapshot(now)
    policy = core.policy
    tokens = TokenFigures(
        now=ledger.projected(now) if has else None,
        available=ledger.available(now) if has else None,
        in_flight=ledger.in_flight(),
        refill_rate=lsnap.get("refill_rate"),
        refill_in_ms=lsnap.get("refill_in_ms"),
        cap=lsnap.get("cap"),
        recharge_mode=ledger.recharge_mode,
        last_sync_age_s=(
            round(now - policy.last_success_at, 3) if policy.last_success_at is not None else None
        ),
        last_observation_age_s=(
            round(now - core.last_observation_at, 3)
            if core.last_observation_at is not None
            else None
        ),
        unaccounted=ledger.unaccounted,
        spent=core.tokens_spent,
        spent_clients=core.tokens_spent_clients,
        spent_workers=core.tokens_spent - core.tokens_spent_clients,
        max_cost=ledger.max_cost(),
        needs_sync=ledger.needs_sync,
        ledger=lsnap,
    )
    b = core.settings.broker
    keepa = KeepaFigures(
        token_syncs=core.keepa_counts["token_syncs"],
        sync_errors=core.keepa_counts["sync_errors"],
        status_429=core.keepa_counts["status_429"],
        errors=core.keepa_counts["errors"],
        errors_by_status=dict(core.keepa_errors_by_status),
        last_error=core.last_keepa_error,
        sync_in_flight=policy.in_flight,
    )
    return StatusSnapshot(
        broker_id=core.broker_id,
        version=core.version,
        address=core.address,
        pid=os.getpid(),
        host=core.registry.this_host,
        uptime_s=round(now - core.started_at, 3),
        draining=core.draining,
        tokens=tokens,
        permits=PermitFigures(**core.permits.stats(now)),
        workers=workers_status(core, now) if per_worker else (),
        workers_by_state=core.registry.counts_by_state(),
        kills=kills_status(core, now) if per_worker else (),
        clients=clients_status(core, now) if per_worker else (),
        kills_by_reason=dict(core.killer.by_reason),
        kills_by_action=dict(core.killer.by_action),
        keepa=keepa,
        bad_messages=dict(core.bad_messages),
        send_failures=core.send_failures,
        loop_turns=core.loop_turns,
        pipeline=core.pipeline,
        pipeline_from=core.pipeline_from,
        pipeline_age_s=(round(now - core.pipeline_at, 3) if core.pipeline_at is not None else None),
        settings={
            "heartbeat_s": b.heartbeat_s,
            "liveness": b.liveness,
            "stall_s": b.stall_s,
            "kill_grace_s": b.kill_grace_s,
            "lease_ttl_s": b.lease_ttl_s,
            "soft_floor": b.soft_floor,
            "resume_at": b.resume_at,
            "max_deficit": b.max_deficit,
            "refill_period_s": core.settings.keepa.refill_period_s,
        },
    )


def workers_status(core: BrokerCore, now: float) -> tuple[dict[str, Any], ...]:
    held = core.permits.held_by_worker()
    return tuple(
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
            "queued": core.permits.queued_for(rec.key),
            "tokens_spent": rec.tokens_spent,
            "settles": rec.settles,
            "stage": rec.stage,
            "items_done": rec.items_done,
            "gone_reason": rec.gone_reason,
        }
        for rec in core.registry.records()
    )


def kills_status(core: BrokerCore, now: float) -> tuple[dict[str, Any], ...]:
    wall = core.wall_clock()
    return tuple(k.as_dict(now, wall) for k in list(core.killer.history)[-MAX_KILLS_SHOWN:])


def clients_status(core: BrokerCore, now: float) -> tuple[dict[str, Any], ...]:
    """The ROLE_CLIENT peers (gateway clients, permit API scripts): name, state, queued
    requests, permits delivered and held, tokens spent, age of the last settled call."""
    held = core.permits.held_by_worker()
    return tuple(
        {
            "id": rec.worker_id,
            "host": rec.host,
            "pid": rec.pid,
            "state": rec.state,
            "waiting": core.permits.queued_for(rec.key),
            "granted": rec.grants,
            "permits_held": held[rec.key],
            "tokens_spent": rec.tokens_spent,
            "settles": rec.settles,
            "last_call_age_s": (
                round(now - rec.last_call_at, 3) if rec.last_call_at is not None else None
            ),
            "gone_reason": rec.gone_reason,
        }
        for rec in core.registry.records()
        if rec.role == protocol.ROLE_CLIENT
    )


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
