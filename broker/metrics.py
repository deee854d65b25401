"""Prometheus metrics of the broker on ``127.0.0.1:broker.metrics_port`` (off when 0).

A private ``CollectorRegistry`` (nothing global). The broker's loop owns the figures: it
calls ``update(broker, now)`` from its housekeeping (at most every ``UPDATE_EVERY_S``) and
``granted(wait_s)`` for each fresh grant; the HTTP thread of prometheus_client only reads
the thread-safe metric objects, never the broker's state.

=========================================  ========  ======================================
metric                                     type      meaning
=========================================  ========  ======================================
``keepa_fleet_tokens``                     gauge     projected balance now
``keepa_fleet_tokens_available``           gauge     projected minus in flight
``keepa_fleet_tokens_in_flight``           gauge     cost of granted, unsettled permits
``keepa_fleet_refill_rate``                gauge     tokens per refill step
``keepa_fleet_recharge_mode``              gauge     1 while recharging
``keepa_fleet_tokens_unaccounted``         gauge     tokens spent by someone else
``keepa_fleet_permits_queued``             gauge     requests waiting
``keepa_fleet_workers{state}``             gauge     workers by state
``keepa_fleet_permits_granted_total``      counter   permits granted
``keepa_fleet_permits_settled_total``      counter   permits settled
``keepa_fleet_permits_expired_total``      counter   leases expired unsettled
``keepa_fleet_permits_rejected_total``     counter   requests rejected
``keepa_fleet_tokens_spent_total``         counter   tokensConsumed of settled calls
``keepa_fleet_client_tokens_spent_total``  counter   of which by client programs (gateway)
``keepa_fleet_clients{state}``             gauge     client programs (gateway) by state
``keepa_fleet_keepa_429_total``            counter   HTTP 429s reported in settles
``keepa_fleet_token_syncs_total``          counter   successful /token calls
``keepa_fleet_keepa_errors_total``         counter   failed /token calls and error settles
``keepa_fleet_kills_total{reason}``        counter   workers killed, by reason
``keepa_fleet_bad_messages_total{code}``   counter   bad messages, by code
``keepa_fleet_grant_wait_seconds``         histo     request to grant
``keepa_fleet_problem{problem}``           gauge     active problems (``broker.health``):
                                                     1 for the Keepa key's; storage
                                                     problems: how many workers have it
=========================================  ========  ======================================
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from broker import keepa_state, states
from common import protocol, storage_health

if TYPE_CHECKING:
    from broker.core import BrokerCore

log = logging.getLogger(__name__)

UPDATE_EVERY_S = 0.5
BIND_HOST = "127.0.0.1"
WAIT_BUCKETS_S = (0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0)
QUERY_FIGURES = ("deals_live", "deals_found", "candidates_waiting", "tokens", "pages")
MAX_LABEL_VALUES = 64  # bad-message codes are a fixed set; this bounds them anyway
# The problems status can name (broker.health), shown at 0 before they ever happen.
PROBLEM_NAMES = (
    *(s for s in keepa_state.STATES if s != keepa_state.OK),
    *(f"storage_{p}" for p in storage_health.PROBLEMS),
)


class BrokerMetrics:
    def __init__(self, port: int, *, host: str = BIND_HOST) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"keepa_fleet_{name}", doc, labels, registry=r)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"keepa_fleet_{name}", doc, labels, registry=r)

        self.tokens = gauge("tokens", "projected token balance now")
        self.available = gauge("tokens_available", "projected balance minus tokens in flight")
        self.in_flight = gauge("tokens_in_flight", "cost of granted, unsettled permits")
        self.refill_rate = gauge("refill_rate", "tokens added per refill step")
        self.recharge = gauge("recharge_mode", "1 while the broker waits for a recharge")
        self.unaccounted = gauge("tokens_unaccounted", "tokens spent by another program")
        self.queued = gauge("permits_queued", "requests waiting for a grant")
        self.workers = gauge("workers", "registered workers by state", ("state",))
        self.query = gauge(
            "query",
            "per deal query: deals_live, deals_found, candidates_waiting, tokens",
            ("query", "figure"),
        )
        self._counters = {
            "granted": counter("permits_granted", "permits granted"),
            "settled": counter("permits_settled", "permits settled"),
            "expired": counter("permits_expired", "leases expired unsettled"),
            "rejected": counter("permits_rejected", "requests rejected"),
            "spent": counter("tokens_spent", "tokensConsumed of settled calls"),
            "spent_clients": counter(
                "client_tokens_spent", "tokensConsumed of calls settled by client programs"
            ),
            "status_429": counter("keepa_429", "HTTP 429s reported in settles"),
            "token_syncs": counter("token_syncs", "successful /token calls"),
            "errors": counter("keepa_errors", "failed /token calls and error settles"),
        }
        self.kills = counter("kills", "workers killed", ("reason",))
        self.clients = gauge("clients", "client programs (gateway) by state", ("state",))
        self.bad = counter("bad_messages", "bad messages received", ("code",))
        self.grant_wait = Histogram(
            "keepa_fleet_grant_wait_seconds",
            "time from request to grant",
            buckets=WAIT_BUCKETS_S,
            registry=r,
        )
        # issue 12: 1 while a problem of the Keepa key is active; for storage problems, the
        # number of workers that have it (broker.health); 0 otherwise.
        self.problem = gauge("problem", "active problems (broker.health)", ("problem",))
        for name in PROBLEM_NAMES:
            self.problem.labels(problem=name).set(0)
        for state in states.WORKER_STATES:
            self.workers.labels(state=state).set(0)
        for reason in states.KILL_REASONS:
            self.kills.labels(reason=reason)
        self._last: dict[str, float] = {}
        self._next_update = float("-inf")
        self._server, self._thread = start_http_server(port, addr=host, registry=r)
        self.port = int(self._server.server_address[1])
        log.info("Prometheus metrics on http://%s:%d/metrics", host, self.port)

    def granted(self, wait_s: float) -> None:
        self.grant_wait.observe(max(0.0, wait_s))

    def update(self, broker: BrokerCore, now: float, *, force: bool = False) -> None:
        """Copy the broker's figures into the metrics (called by the broker's loop)."""
        if not force and now < self._next_update:
            return
        self._next_update = now + UPDATE_EVERY_S
        state = broker.snapshot(now, per_worker=False)
        tokens, permits, keepa = state.tokens, state.permits, state.keepa
        _set(self.tokens, tokens.now)
        _set(self.available, tokens.available)
        _set(self.in_flight, tokens.in_flight)
        _set(self.refill_rate, tokens.refill_rate)
        _set(self.recharge, 1 if tokens.recharge_mode else 0)
        _set(self.unaccounted, tokens.unaccounted)
        _set(self.queued, permits.queued)
        for worker_state, n in state.workers_by_state.items():
            self.workers.labels(state=worker_state).set(n)
        active = dict.fromkeys(PROBLEM_NAMES, 0)
        for p in state.health.get("problems") or []:
            name = str(p.get("problem"))
            if name in active or len(active) < MAX_LABEL_VALUES:
                active[name] = active.get(name, 0) + 1
        for name, n in active.items():
            self.problem.labels(problem=name).set(n)
        totals = {
            "granted": permits.granted,
            "settled": permits.settled,
            "expired": permits.expired,
            "rejected": permits.rejected,
            "spent": tokens.spent,
            "spent_clients": tokens.spent_clients,
            "status_429": keepa.status_429,
            "token_syncs": keepa.token_syncs,
            "errors": keepa.errors,
        }
        for name, value in totals.items():
            self._advance(name, value, self._counters[name])
        queries = (state.pipeline or {}).get("queries")
        if isinstance(queries, dict):
            for qname, figures in list(queries.items())[:MAX_LABEL_VALUES]:
                for figure in QUERY_FIGURES:
                    shown = figures.get(figure) if isinstance(figures, dict) else None
                    if isinstance(shown, int | float):
                        self.query.labels(query=str(qname), figure=figure).set(shown)
        self._update_clients(broker)
        for reason, n in state.kills_by_reason.items():
            self._advance(f"kill:{reason}", n, self.kills.labels(reason=reason))
        for code, n in list(state.bad_messages.items())[:MAX_LABEL_VALUES]:
            self._advance(f"bad:{code}", n, self.bad.labels(code=code))

    def _update_clients(self, broker: BrokerCore) -> None:
        """Client programs by state (the registry's records of ROLE_CLIENT peers)."""
        counts = dict.fromkeys(states.WORKER_STATES, 0)
        for rec in broker.registry.records():
            if rec.role == protocol.ROLE_CLIENT:
                counts[rec.state] = counts.get(rec.state, 0) + 1
        for client_state, n in counts.items():
            self.clients.labels(state=client_state).set(n)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _advance(self, key: str, value: Any, metric: Any) -> None:
        if not isinstance(value, int | float):
            return
        delta = value - self._last.get(key, 0)
        if delta > 0:
            metric.inc(delta)
        self._last[key] = value


def _set(gauge: Gauge, value: Any) -> None:
    if isinstance(value, int | float):
        gauge.set(value)
