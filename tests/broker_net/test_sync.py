"""When the broker asks Keepa /token (SyncPolicy, fake clock), and the thread that asks
(TokenSync with a fake client): answers come back through the inproc socket."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from broker.sync import GAP, LONG_WAIT, START, UNKNOWN_OUTCOME, SyncPolicy, TokenSync
from common.errors import KeepaServerError
from common.keepa import KeepaResponse, TokenEnvelope

ENV = TokenEnvelope(timestamp_ms=1, tokens_left=50, refill_in_ms=1000, refill_rate=20)


def policy(**kw: float) -> SyncPolicy:
    args: dict[str, float] = {
        "min_interval_s": 1.0,
        "gap_s": 300.0,
        "short_wait_s": 5.0,
        "refill_period_s": 60.0,
    }
    args.update(kw)
    return SyncPolicy(**args)  # type: ignore[arg-type]


def reason(p: SyncPolicy, now: float, **kw: Any) -> str | None:
    args: dict[str, Any] = {
        "has_observation": True,
        "last_observation_at": now,
        "needs_sync": False,
        "head_wait_s": None,
        "refill_at": 60.0,
    }
    args.update(kw)
    return p.reason(now, **args)


def test_start_until_the_first_observation() -> None:
    p = policy()
    assert reason(p, 0.0, has_observation=False, last_observation_at=None) == START
    assert reason(p, 0.0) is None


def test_unknown_outcome_and_gap() -> None:
    p = policy(gap_s=10.0)
    assert reason(p, 5.0, needs_sync=True) == UNKNOWN_OUTCOME
    assert reason(p, 9.9, last_observation_at=0.0) is None
    assert reason(p, 10.0, last_observation_at=0.0) == GAP


def test_long_wait_is_confirmed_once_per_refill_step() -> None:
    p = policy()
    assert reason(p, 0.0, head_wait_s=4.0) is None  # a short wait: no need
    assert reason(p, 0.0, head_wait_s=50.0, refill_at=60.0) == LONG_WAIT
    p.started(LONG_WAIT, 0.0, 60.0)
    p.finished(True, 0.1)
    # Same refill step (a few ms of jitter in the projected instant): no new sync.
    assert reason(p, 2.0, head_wait_s=48.0, refill_at=60.004) is None
    # The next step has begun and the wait is still long: confirm again.
    assert reason(p, 61.0, head_wait_s=50.0, refill_at=120.0) == LONG_WAIT
    # The wait became short: the confirmation is forgotten.
    assert reason(p, 62.0, head_wait_s=1.0, refill_at=120.0) is None
    assert reason(p, 63.0, head_wait_s=30.0, refill_at=120.0) == LONG_WAIT


def test_min_interval_and_backoff() -> None:
    p = policy(min_interval_s=1.0)
    assert p.may_start(0.0)
    p.started(START, 0.0, None)
    assert not p.may_start(5.0)  # in flight
    p.finished(False, 0.2)
    waits = []
    for i in range(10):
        t = p.next_allowed_at
        assert not p.may_start(t - 0.01)
        assert p.may_start(t)
        p.started(START, t, None)
        p.finished(False, t)
        waits.append(p.next_allowed_at - t)
        assert i < 2 or waits[-1] >= waits[-2] - 1e-9
    assert max(waits) == pytest.approx(30.0)
    t = p.next_allowed_at
    p.started(START, t, None)
    p.finished(True, t)
    assert p.failures == 0
    assert p.next_allowed_at == pytest.approx(t + 1.0)


class FakeClient:
    def __init__(self) -> None:
        self.calls = 0
        self.fail = False
        self.threads: set[str] = set()

    def token(self) -> KeepaResponse:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        if self.fail:
            raise KeepaServerError("/token: HTTP 500", status=500, envelope=ENV)
        return KeepaResponse(200, ENV, {}, 0.0)


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    c: zmq.Context[Any] = zmq.Context()
    try:
        yield c
    finally:
        c.term()


def test_token_sync_answers_through_the_socket(ctx: zmq.Context[Any]) -> None:
    client = FakeClient()
    sync = TokenSync(ctx, lambda: client, clock=lambda: 42.0)
    sync.start()
    try:
        sync.request(START)
        assert sync.socket.poll(10_000, zmq.POLLIN)
        [result] = sync.results()
        assert result.ok and result.envelope == ENV and result.reason == START
        assert result.at == 42.0
        client.fail = True
        sync.request(GAP)
        assert sync.socket.poll(10_000, zmq.POLLIN)
        [failed] = sync.results()
        assert not failed.ok and failed.status == 500 and failed.envelope == ENV
        assert "500" in failed.error
        assert client.threads == {"token-sync"}
    finally:
        assert sync.close()
