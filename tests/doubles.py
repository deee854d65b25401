"""The test doubles of the project, one for each side of the wire.

``CoreHarness``: the broker without sockets — a real ``BrokerCore`` (``broker/core.py``) whose
sends are recorded (``RecordingSend``), whose /token requests are recorded and answered by
the test (``answer_sync``), whose signals are recorded instead of sent, on a clock the test
moves. Unit tests, the fuzzers and the benches that need "a broker" without a process use
this.

``Peer`` (``peer_double``): a fleet peer as the broker sees it — a real DEALER socket that
speaks the protocol (HELLO, REQUEST, SETTLE, HEARTBEAT, ...) and reads what comes back, for
tests against a real broker.
"""

from __future__ import annotations

import os
from typing import Any

from broker.core import BrokerCore, Peer, RecordingSend
from broker.sync import SyncResult
from common import protocol
from common.config import Settings, load_settings
from common.keepa import TokenEnvelope

THIS_HOST = "double-host"
OTHER_HOST = "elsewhere"
KEEPA_EPOCH_MS = 1_700_000_000_000

CORE_SETTINGS: dict[str, Any] = {
    "broker.address": "tcp://127.0.0.1:0",
    "broker.heartbeat_s": 1.0,
    "broker.liveness": 3,
    "broker.stall_s": 5.0,
    "broker.kill_grace_s": 1.0,
    "broker.lease_ttl_s": 10.0,
    "keepa.read_timeout_s": 5.0,
    "broker.sync_min_interval_s": 0.5,
    "broker.short_wait_s": 2.0,
    "keepa.refill_period_s": 1.0,
}


def core_settings(**overrides: Any) -> Settings:
    """Settings for a core on a 1 s heartbeat and a 1 s refill step; ``overrides`` are
    settings keys with ``__`` for the dot (``broker__soft_floor=0``)."""
    values = dict(CORE_SETTINGS)
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_settings(env={}, overrides=values)


def envelope(now: float, tokens_left: int, rate: int, consumed: int = 0) -> TokenEnvelope:
    """A Keepa envelope at broker time ``now`` (the refill steps every whole second)."""
    ms = int(now * 1000)
    return TokenEnvelope(
        timestamp_ms=KEEPA_EPOCH_MS + ms,
        tokens_left=tokens_left,
        refill_in_ms=1000 - ms % 1000,
        refill_rate=rate,
        tokens_consumed=consumed,
    )


class CoreHarness:
    """A ``BrokerCore`` driven by hand: ``send`` a message, ``advance`` the clock (which runs
    the housekeeping), read what the core sent."""

    def __init__(self, **overrides: Any) -> None:
        self.now = 0.0
        self.sent = RecordingSend()
        self.sync_requests: list[str] = []
        self.signals: list[tuple[int, int]] = []
        self.core = BrokerCore(
            core_settings(**overrides),
            send=self.sent,
            request_sync=self._request_sync,
            clock=lambda: self.now,
            wall_clock=lambda: 1_700_000_000.0 + self.now,
            signal_fn=lambda pid, sig: self.signals.append((pid, sig)),
            this_host=THIS_HOST,
        )

    def _request_sync(self, reason: str) -> bool:
        self.sync_requests.append(reason)
        return True

    def send(self, identity: bytes, msg: protocol.Message) -> list[protocol.Message]:
        """Hand ``msg`` from ``identity`` to the core; the messages sent during it (to
        anyone, in order)."""
        self.core.handle(Peer(identity), msg, self.now)
        return [m for _, m in self.sent.take()]

    def send_frames(self, frames: list[bytes]) -> list[protocol.Message]:
        """Raw ROUTER frames (identity first), decoded by the core as the transport does."""
        self.core.dispatch(frames, self.now)
        return [m for _, m in self.sent.take()]

    def advance(self, dt: float) -> list[tuple[bytes, protocol.Message]]:
        """Move the clock and run the housekeeping; (identity, message) of what was sent."""
        self.now += dt
        self.core.housekeeping(self.now)
        return self.sent.take()

    def hello(
        self,
        identity: bytes,
        worker_id: str = "w1",
        *,
        host: str = OTHER_HOST,
        pid: int = 4242,
        start_time: int = 1,
        role: str = "all",
    ) -> protocol.Message:
        replies = self.send(
            identity,
            protocol.Hello(
                worker_id=worker_id,
                pid=pid,
                host=host,
                start_time=start_time,
                role=role,
                version="test",
            ),
        )
        assert len(replies) == 1, replies
        return replies[0]

    def answer_sync(self, tokens_left: int, rate: int) -> None:
        """Answer the /token request the core made (there must be one)."""
        assert self.sync_requests, "the core asked Keepa nothing"
        reason = self.sync_requests.pop(0)
        self.core._on_sync_result(
            SyncResult(reason, self.now, self.now, envelope(self.now, tokens_left, rate))
        )


def own_start_time() -> int:
    """This process's start time as the broker checks it (a same-host HELLO)."""
    from common import procinfo

    start = procinfo.process_start_time(os.getpid())
    assert start is not None
    return start
