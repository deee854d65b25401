"""The link thread against a fake broker: HELLO, heartbeats, progress, broker loss and
reconnection, DISCONNECT, KILL, and what it ignores."""

from __future__ import annotations

import os
import random
import socket
import threading

import pytest
from doubles import FakeBroker
from support import wait_until
from workers_runtime.conftest import Connected
from workers_runtime.wr_support import CallThread, make_client, response

from common import procinfo, protocol
from common.errors import BrokerUnavailable
from workers.link import MAX_INFO_BYTES, RECONNECT_JITTER, RECONNECT_MIN_S, VERSION, Backoff


def test_hello_comes_first_with_this_process(broker: FakeBroker) -> None:
    link, _, _ = make_client(broker.address, worker_id="worker_07")
    link.start()
    try:
        _, first = broker.recv()
        assert isinstance(first, protocol.Hello)
        assert first.worker_id == "worker_07"
        assert first.pid == os.getpid()
        assert first.start_time == procinfo.process_start_time(os.getpid())
        assert first.start_time > 0
        assert first.host == socket.gethostname()
        assert (first.role, first.version) == ("all", VERSION)
        # Nothing but HELLO before WELCOME (no heartbeats, no requests).
        assert broker.drain() == []
    finally:
        link.close(None, timeout_s=5)


def test_heartbeats_go_on_while_the_work_loop_is_blocked(connected: Connected) -> None:
    release = threading.Event()

    def blocking_call() -> object:
        assert release.wait(20), "never released"
        return response()

    call = CallThread(lambda: connected.client.call(5, blocking_call))
    _, req = connected.broker.expect(protocol.Request)
    connected.broker.send(
        connected.identity, protocol.Grant(seq=req.seq, permit="p", cost=5, lease_ttl_s=30)
    )
    wait_until(lambda: not connected.link.work.heartbeat().waiting, 10, message="granted")
    connected.broker.drain()
    beats = [connected.broker.expect(protocol.Heartbeat)[1] for _ in range(4)]
    assert not call.done.is_set()  # fn is still blocked, yet the heartbeats came
    assert {hb.progress for hb in beats} == {0}
    assert not beats[-1].waiting  # granted: blocked in fn, not waiting on the broker
    release.set()
    _, settle = connected.broker.expect(protocol.Settle)
    assert settle.status == "ok"
    call.join()


def test_progress_advances_only_through_advance(connected: Connected) -> None:
    beats = [connected.broker.expect(protocol.Heartbeat)[1] for _ in range(3)]
    assert [hb.progress for hb in beats] == [0, 0, 0]
    connected.client.advance("ingest", 3)
    connected.client.report({"pipeline": {"deals_live": 2}, "feed_stale": False})
    connected.client.advance("ingest", 2)
    connected.client.report({"feed_stale": True})

    def latest() -> protocol.Heartbeat | None:
        _, hb = connected.broker.expect(protocol.Heartbeat)
        return hb if hb.progress == 2 else None

    hb = wait_until(latest, 10, interval=0)
    assert (hb.stage, hb.items_done) == ("ingest", 5)
    assert hb.info == {"pipeline": {"deals_live": 2}, "feed_stale": True}
    # Heartbeats alone do not move it.
    more = [connected.broker.expect(protocol.Heartbeat)[1] for _ in range(3)]
    assert {m.progress for m in more} == {2}


def test_an_oversized_report_is_left_out_of_heartbeats(connected: Connected) -> None:
    connected.client.report({"blob": "x" * (MAX_INFO_BYTES + 1)})

    def small() -> bool:
        return connected.broker.expect(protocol.Heartbeat)[1].info == {}

    wait_until(small, 10, interval=0)


def test_broker_gone_fails_closed_then_reconnects(broker: FakeBroker) -> None:
    link, client, _ = make_client(broker.address, reconnect_max_s=0.3)
    link.start()
    port = broker.port
    try:
        identity, _ = broker.handshake(heartbeat_s=0.1, liveness=3)
        wait_until(lambda: link.ready, 10)
        # A call waiting for its grant when the broker goes ends with BrokerUnavailable.
        waiting = CallThread(lambda: client.call(5, response, deadline_s=30))
        broker.expect(protocol.Request)
        broker.close()
        waiting.join()
        assert isinstance(waiting.error, BrokerUnavailable)
        assert not link.ready
        # No broker: call fails at once, fn never runs.
        called = threading.Event()
        with pytest.raises(BrokerUnavailable):
            client.call(1, lambda: called.set())
        assert not called.is_set()
        # A broker on the same port again: the link finds it and says HELLO again.
        again = FakeBroker(port)
        try:
            new_identity, hello = again.handshake(timeout=15)
            assert new_identity != identity  # a new socket
            assert hello.worker_id == "w-test"
            wait_until(lambda: link.ready, 10)
            call = CallThread(lambda: client.call(2, response))
            _, req = again.expect(protocol.Request)
            again.send(
                new_identity, protocol.Grant(seq=req.seq, permit="p2", cost=2, lease_ttl_s=30)
            )
            assert again.expect(protocol.Settle)[1].status == "ok"
            call.join()
            assert call.error is None
        finally:
            again.close()
    finally:
        link.close(None, timeout_s=5)


def test_settle_of_a_permit_from_a_gone_broker_reaches_the_next(broker: FakeBroker) -> None:
    link, client, _ = make_client(broker.address, reconnect_max_s=0.3)
    link.start()
    port = broker.port
    release = threading.Event()

    def slow() -> object:
        assert release.wait(20)
        return response(consumed=9)

    try:
        identity, _ = broker.handshake(heartbeat_s=0.1, liveness=3)
        wait_until(lambda: link.ready, 10)
        call = CallThread(lambda: client.call(5, slow))
        _, req = broker.expect(protocol.Request)
        broker.send(identity, protocol.Grant(seq=req.seq, permit="old", cost=5, lease_ttl_s=30))
        wait_until(lambda: not link.work.heartbeat().waiting, 10)
        broker.close()
        wait_until(lambda: not link.ready, 10, message="broker declared gone")
        release.set()  # the call in hand ends while no broker is connected
        call.join()
        assert call.error is None
        again = FakeBroker(port)
        try:
            again.handshake(timeout=15)
            _, settle = again.expect(protocol.Settle)
            assert (settle.permit, settle.status) == ("old", "ok")
            assert settle.envelope is not None and settle.envelope["tokensConsumed"] == 9
        finally:
            again.close()
    finally:
        link.close(None, timeout_s=5)


def test_disconnect_says_hello_again(connected: Connected) -> None:
    waiting = CallThread(lambda: connected.client.call(5, response, deadline_s=30))
    connected.broker.expect(protocol.Request)
    connected.broker.send(connected.identity, protocol.Disconnect(reason="unknown worker"))
    identity, hello = connected.broker.expect(protocol.Hello)
    assert identity == connected.identity  # the same socket, at once
    assert hello.worker_id == connected.hello.worker_id
    waiting.join()
    assert isinstance(waiting.error, BrokerUnavailable)
    connected.broker.send(
        identity,
        protocol.Welcome(broker_id="fake", heartbeat_s=0.1, liveness=100, lease_ttl_s=30),
    )
    wait_until(lambda: connected.link.ready, 10)


def test_kill_says_bye_and_calls_on_kill(broker: FakeBroker) -> None:
    killed: list[str] = []
    link, _, _ = make_client(broker.address, on_kill=killed.append)
    link.start()
    try:
        identity, _ = broker.handshake()
        wait_until(lambda: link.ready, 10)
        broker.send(identity, protocol.Kill(reason="stalled"))
        _, bye = broker.expect(protocol.Bye)
        assert bye.reason == "killed: stalled"
        wait_until(lambda: killed == ["stalled"], 10)
        assert not link.ready
    finally:
        link.close(None, timeout_s=5)


def test_unexpected_messages_are_ignored(connected: Connected) -> None:
    b = connected.broker
    b.sock.send_multipart([connected.identity, b"not msgpack"])
    b.send(connected.identity, protocol.StatusReply(state={}))
    b.send(connected.identity, protocol.Grant(seq=999, permit="stray", cost=1, lease_ttl_s=30))
    _, settle = b.expect(protocol.Settle)
    assert (settle.permit, settle.status) == ("stray", "not_sent")
    b.expect(protocol.Heartbeat)
    assert connected.link.ready


def test_close_says_bye(connected: Connected) -> None:
    connected.link.close("SIGTERM", timeout_s=5)
    _, bye = connected.broker.expect(protocol.Bye)
    assert bye.reason == "SIGTERM"
    assert not connected.link.alive


def test_backoff_doubles_to_the_cap_with_jitter() -> None:
    backoff = Backoff(1.0, random.Random(4))
    delays = [backoff.next_delay() for _ in range(8)]
    expected_caps = [min(1.0, RECONNECT_MIN_S * 2**i) for i in range(8)]
    for delay, cap in zip(delays, expected_caps, strict=True):
        assert cap * (1 - RECONNECT_JITTER) <= delay <= cap
    assert len(set(delays)) == len(delays)  # jittered
    backoff.reset()
    assert backoff.next_delay() <= RECONNECT_MIN_S
