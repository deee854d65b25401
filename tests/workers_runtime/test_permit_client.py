"""call() against a fake broker: GRANT then the settle of every outcome, REJECT, no grant,
and fail-closed without a broker."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from doubles import FakeBroker
from support import wait_until
from workers_runtime.conftest import Connected
from workers_runtime.wr_support import CallThread, envelope, make_client, response

from common import protocol
from common.errors import (
    BrokerUnavailable,
    KeepaBadResponse,
    KeepaConnectionError,
    KeepaNotEnoughTokens,
    KeepaServerError,
    KeepaTimeout,
    PermitRejected,
    PermitTimeout,
)
from workers.permit_client import settle_status


def grant(c: Connected, cost: int = 5, permit: str = "p-1") -> protocol.Request:
    _, req = c.broker.expect(protocol.Request)
    assert req.cost == cost
    c.broker.send(
        c.identity, protocol.Grant(seq=req.seq, permit=permit, cost=req.cost, lease_ttl_s=30)
    )
    return req


def test_ok_settles_with_the_envelope(connected: Connected) -> None:
    resp = response(consumed=7)
    call = CallThread(lambda: connected.client.call(5, lambda: resp, priority=3, deadline_s=9))
    req = grant(connected)
    assert (req.priority, req.deadline_s) == (3, 9.0)
    _, settle = connected.broker.expect(protocol.Settle)
    call.join()
    assert call.error is None and call.result is resp
    assert settle == protocol.Settle(
        permit="p-1", status="ok", envelope=resp.envelope.to_wire(), http_status=200
    )


def _raise(exc: BaseException) -> Callable[[], Any]:
    def fn() -> Any:
        raise exc

    return fn


ERROR_CASES = [
    pytest.param(
        KeepaNotEnoughTokens("429", status=429, envelope=envelope(0, -3)),
        ("http_error", envelope(0, -3).to_wire(), 429),
        id="429-with-envelope",
    ),
    pytest.param(KeepaServerError("500", status=503), ("http_error", None, 503), id="5xx"),
    pytest.param(KeepaTimeout("read timeout"), ("timeout", None, None), id="timeout"),
    pytest.param(KeepaConnectionError("reset"), ("connection_error", None, None), id="connection"),
    pytest.param(KeepaBadResponse("not json", status=200), ("error", None, 200), id="bad-body"),
    pytest.param(
        KeepaConnectionError("refused", sent=False), ("not_sent", None, None), id="not-sent"
    ),
    pytest.param(ValueError("a bug in fn"), ("error", None, None), id="other-exception"),
]


@pytest.mark.parametrize(("exc", "expected"), ERROR_CASES)
def test_failures_settle_then_reraise(
    connected: Connected, exc: BaseException, expected: tuple[str, Any, Any]
) -> None:
    call = CallThread(lambda: connected.client.call(5, _raise(exc)))
    grant(connected, permit="p-err")
    _, settle = connected.broker.expect(protocol.Settle)
    call.join()
    assert call.error is exc
    status, wire, http_status = expected
    assert (settle.permit, settle.status, settle.envelope, settle.http_status) == (
        "p-err",
        status,
        wire,
        http_status,
    )


def test_settle_status_of_an_exception_marked_not_sent() -> None:
    class BeforeRequest(RuntimeError):
        sent = False

    assert settle_status(BeforeRequest("claim renewal failed"))[0] == "not_sent"
    assert settle_status(RuntimeError("after"))[0] == "error"


def test_no_grant_by_the_deadline_cancels(connected: Connected) -> None:
    called = threading.Event()
    call = CallThread(lambda: connected.client.call(4, lambda: called.set(), deadline_s=0.3))
    _, req = connected.broker.expect(protocol.Request)
    assert req.deadline_s == pytest.approx(0.3)
    _, hb = connected.broker.expect(protocol.Heartbeat)  # sent while the request is out
    assert hb.waiting
    _, cancel = connected.broker.expect(protocol.Cancel)
    assert cancel.seq == req.seq
    call.join()
    assert isinstance(call.error, PermitTimeout)
    assert not called.is_set()
    # Not waiting any more; a GRANT crossing the CANCEL is settled "not_sent" by the link.
    wait_until(lambda: not connected.link.work.heartbeat().waiting, 5)
    connected.broker.send(
        connected.identity, protocol.Grant(seq=req.seq, permit="late", cost=4, lease_ttl_s=30)
    )
    _, settle = connected.broker.expect(protocol.Settle)
    assert (settle.permit, settle.status) == ("late", "not_sent")


def test_default_deadline_is_grant_wait(broker: FakeBroker) -> None:
    link, client, _ = make_client(broker.address, grant_wait_s=0.25)
    link.start()
    try:
        broker.handshake()
        wait_until(lambda: link.ready, 10)
        call = CallThread(lambda: client.call(1, response))
        _, req = broker.expect(protocol.Request)
        assert req.deadline_s == pytest.approx(0.25)
        broker.expect(protocol.Cancel)
        call.join()
        assert isinstance(call.error, PermitTimeout)
    finally:
        link.close(None, timeout_s=5)


def test_reject_raises_with_max_cost(connected: Connected) -> None:
    assert connected.client.max_cost() == 300  # from WELCOME
    call = CallThread(lambda: connected.client.call(500, response))
    _, req = connected.broker.expect(protocol.Request)
    connected.broker.send(
        connected.identity, protocol.Reject(seq=req.seq, reason="too_large", max_cost=240)
    )
    call.join()
    assert isinstance(call.error, PermitRejected)
    assert (call.error.reason, call.error.max_cost) == ("too_large", 240)
    assert connected.client.max_cost() == 240


def test_broker_heartbeat_updates_max_cost(connected: Connected) -> None:
    connected.broker.send(connected.identity, protocol.Heartbeat(max_cost=1234))
    wait_until(lambda: connected.client.max_cost() == 1234, 10)


def test_stopping_ends_the_wait_for_a_grant(broker: FakeBroker) -> None:
    link, client, stop = make_client(broker.address)
    link.start()
    try:
        broker.handshake()
        wait_until(lambda: link.ready, 10)
        call = CallThread(lambda: client.call(3, response, deadline_s=60))
        _, req = broker.expect(protocol.Request)
        stop.set()
        _, cancel = broker.expect(protocol.Cancel)
        assert cancel.seq == req.seq
        call.join()
        assert isinstance(call.error, PermitTimeout)
        # While stopping, no new request goes out.
        with pytest.raises(PermitTimeout):
            client.call(3, response)
    finally:
        link.close(None, timeout_s=5)


def test_without_a_broker_call_fails_closed(broker: FakeBroker) -> None:
    link, client, _ = make_client(broker.address)
    link.start()  # HELLO goes out, but the fake broker never answers WELCOME
    try:
        broker.expect(protocol.Hello)
        called = threading.Event()
        with pytest.raises(BrokerUnavailable):
            client.call(1, lambda: called.set())
        assert not called.is_set()
        assert not [m for m in broker.drain() if isinstance(m, protocol.Request)]
    finally:
        link.close(None, timeout_s=5)
