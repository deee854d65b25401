"""The broker's live state, read once into the typed, frozen ``StatusSnapshot``
(``common/status.py``, where the readers on the other side of the wire find it too).

``take_snapshot(core, now)`` reads the core once; everything that shows the state reads
the snapshot: ``as_dict()`` is the STATUS_REPLY body (the status tool, the
gateway, tests), ``summary_line`` is the broker's periodic log line, and ``broker.metrics``
copies its figures into Prometheus. A figure added here is added once, for all of them.
``per_worker=False`` leaves the per-worker lists empty (the figures only: what the metrics
and the summary line need, without a dict per worker every time).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from common import protocol
from common.status import (
    KeepaFigures,
    PermitFigures,
    StatusSnapshot,
    TokenFigures,
    json_safe,
    summary_line,
)

if TYPE_CHECKING:
    from broker.core import BrokerCore

__all__ = [
    "KeepaFigures",
    "PermitFigures",
    "StatusSnapshot",
    "TokenFigures",
    "json_safe",
    "summary_line",
    "take_snapshot",
]

MAX_KILLS_SHOWN = 50


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
        health=core.health.status(now),
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
