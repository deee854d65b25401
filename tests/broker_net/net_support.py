"""Helpers of the broker's socket tests: settings with fast timers, a fake Keepa ``/token``,
protocol peers (DEALER sockets, linger 0, every receive with a timeout), status queries."""

from __future__ import annotations

import threading
import time
from typing import Any

from broker.status_cli import fetch_status
from common.config import Settings, load_settings
from common.errors import KeepaServerError
from common.keepa import KeepaResponse, TokenEnvelope

RECV_TIMEOUT_S = 10.0

# Fast timers; a test overrides what it needs.
FAST: dict[str, Any] = {
    "broker.address": "tcp://127.0.0.1:0",
    "broker.heartbeat_s": 0.2,
    "broker.liveness": 50,  # peers of these tests do not heartbeat: 10 s before "silent"
    "broker.stall_s": 60.0,
    "broker.kill_grace_s": 1.0,
    "broker.sync_min_interval_s": 0.05,
    "broker.short_wait_s": 5.0,
    "keepa.read_timeout_s": 1.0,
    "broker.lease_ttl_s": 30.0,
}


def broker_settings(**overrides: Any) -> Settings:
    """Settings from the defaults and ``FAST`` only (the environment is ignored); keyword
    names use ``__`` for the dot: ``broker__liveness=3``."""
    values = dict(FAST)
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_settings(env={}, overrides=values)


class FakeKeepa:
    """``/token`` answers from a fixed account: Keepa-like timestamps, a balance that only
    the test changes. ``fail`` makes the next N calls fail with HTTP 500."""

    def __init__(self, tokens_left: int = 1000, refill_rate: int = 20, refill_in_ms: int = 60_000):
        self.tokens_left = tokens_left
        self.refill_rate = refill_rate
        self.refill_in_ms = refill_in_ms
        self.fail = 0
        self.calls = 0
        self._lock = threading.Lock()

    def envelope(self, consumed: int = 0) -> TokenEnvelope:
        return TokenEnvelope(
            timestamp_ms=int(time.time() * 1000),
            tokens_left=self.tokens_left,
            refill_in_ms=self.refill_in_ms,
            refill_rate=self.refill_rate,
            tokens_consumed=consumed,
        )

    def token(self) -> KeepaResponse:
        with self._lock:
            self.calls += 1
            if self.fail > 0:
                self.fail -= 1
                raise KeepaServerError("/token: HTTP 500", status=500)
            return KeepaResponse(200, self.envelope(), {}, 0.0)


def status(address: str) -> dict[str, Any]:
    state = fetch_status(address, timeout=RECV_TIMEOUT_S)
    assert state is not None, "the broker did not answer STATUS"
    return state


def worker_status(address: str, worker_id: str) -> dict[str, Any] | None:
    for w in status(address)["workers"]:
        if w["id"] == worker_id:
            return dict(w)
    return None
