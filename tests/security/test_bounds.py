"""Bounds on what a peer can make the broker hold, driven in process (``fuzz.inproc``):
over each, a clear refusal, not memory growth.

=========================  ==================================================================
bound                      over it
=========================  ==================================================================
message size               ERROR ``too_large`` (``protocol.MAX_MESSAGE_BYTES``, 64 KiB);
                           past ``MAX_TRANSPORT_BYTES`` ZeroMQ drops the peer before the
                           broker reads anything (``tests/broker_net/test_bad_input.py``)
queued requests / worker   REJECT ``queue_full`` (``broker.max_queued_per_worker``)
registered workers         ERROR ``too_many_workers`` (``broker.max_workers``)
permit id in a SETTLE      ERROR ``bad_permit`` (``broker.server.MAX_PERMIT_CHARS``)
kept records               fixed caps (gone workers, finished permits, settled ids, answers)
=========================  ==================================================================

The flood test sends tens of thousands of hostile messages from as many identities and
checks that the broker's memory (tracemalloc) stops growing after the first part of it."""

from __future__ import annotations

import logging
import tracemalloc

import pytest
from doubles import envelope
from fuzz.inproc import FakeRouter, make_broker

from broker.server import MAX_PERMIT_CHARS, Broker
from broker.sync import SyncResult
from common import protocol

NOW = 1000.0


@pytest.fixture(autouse=True)
def quiet_broker_logs(caplog: pytest.LogCaptureFixture) -> None:
    """The broker warns about every refused input; the flood would spend its time logging."""
    caplog.set_level(logging.ERROR, logger="broker")


def synced(broker: Broker, tokens_left: int, rate: int = 20) -> Broker:
    broker.housekeeping(NOW)  # asks for /token
    env = envelope(NOW, tokens_left, rate)
    broker._on_sync_result(SyncResult("start", NOW, NOW, env))
    return broker


def router(broker: Broker) -> FakeRouter:
    return broker._router  # type: ignore[return-value]


def hello(broker: Broker, identity: bytes, worker_id: str) -> protocol.Message:
    start = len(router(broker).sent)
    msg = protocol.Hello(worker_id, 4242, "elsewhere", 1, "all", "t")
    broker.dispatch([identity, msg.encode()], NOW)
    return router(broker).replies(start)[-1][1]


def test_oversized_message_is_refused_with_too_large() -> None:
    broker = make_broker([])
    broker.dispatch([b"p", b"\x91" + b"\x00" * protocol.MAX_MESSAGE_BYTES], NOW)
    (_, reply), *_ = router(broker).replies()
    assert isinstance(reply, protocol.Error) and reply.code == "too_large"
    assert broker.bad_messages == {"too_large": 1}


def test_queued_requests_per_worker_are_capped_with_queue_full() -> None:
    broker = synced(make_broker([], broker__max_queued_per_worker=4), tokens_left=0)
    assert isinstance(hello(broker, b"p", "w1"), protocol.Welcome)
    start = len(router(broker).sent)
    for seq in range(1, 21):
        broker.dispatch([b"p", protocol.Request(seq=seq, cost=5).encode()], NOW)
    rejects = [m for _, m in router(broker).replies(start) if isinstance(m, protocol.Reject)]
    assert [r.seq for r in rejects] == list(range(5, 21))
    assert {r.reason for r in rejects} == {"queue_full"}
    assert broker.permits.queued_for(broker.registry.by_identity(b"p").key) == 4  # type: ignore[union-attr]


def test_registered_workers_are_capped_with_too_many_workers() -> None:
    broker = make_broker([], broker__max_workers=5)
    replies = [hello(broker, f"peer-{i}".encode(), f"w{i}") for i in range(50)]
    assert sum(isinstance(r, protocol.Welcome) for r in replies) == 5
    refused = [r for r in replies if isinstance(r, protocol.Error)]
    assert len(refused) == 45 and {r.code for r in refused} == {"too_many_workers"}
    assert broker.registry.live_count() == 5


def test_long_permit_ids_are_refused_with_bad_permit() -> None:
    broker = synced(make_broker([]), tokens_left=100)
    hello(broker, b"p", "w1")
    start = len(router(broker).sent)
    settle = protocol.Settle("x" * (MAX_PERMIT_CHARS + 1), "ok", envelope(NOW, 90, 20, 5).to_wire())
    broker.dispatch([b"p", settle.encode()], NOW)
    (_, reply), *_ = router(broker).replies(start)
    assert isinstance(reply, protocol.Error) and reply.code == "bad_permit"
    assert broker.bad_messages == {"bad_permit": 1}
    assert broker.tokens_spent == 0 and not broker._settled_ids


def flood(broker: Broker, start: int, count: int) -> None:
    """``count`` hostile inputs from as many identities: new workers, full queues, big
    heartbeats, settles of made-up permits with long ids, junk."""
    big_info = {f"k{i}": "v" * 200 for i in range(200)}
    for i in range(start, start + count):
        ident = f"peer-{i}".encode()
        kind = i % 5
        if kind == 0:
            hello = protocol.Hello(f"w{i}", 4242, "elsewhere", 1, "a", "t")
            broker.dispatch([ident, hello.encode()], NOW)
        elif kind == 1:
            broker.dispatch([b"peer-0", protocol.Request(seq=i, cost=5).encode()], NOW)
        elif kind == 2:
            beat = protocol.Heartbeat(progress=i, info=big_info)
            broker.dispatch([b"peer-0", beat.encode()], NOW)
        elif kind == 3:
            permit = f"{i}-" + "p" * (protocol.MAX_MESSAGE_BYTES // 2)
            wire = envelope(NOW, 0, 20, 1).to_wire()
            broker.dispatch([b"peer-0", protocol.Settle(permit, "ok", wire).encode()], NOW)
        else:
            broker.dispatch([ident, b"\x93\x01\xa4JUNK" + bytes(i % 251 for _ in range(100))], NOW)
        router(broker).sent.clear()  # the replies are the socket's, not the broker's, to hold


def test_a_flood_of_hostile_peers_does_not_grow_the_broker() -> None:
    broker = synced(make_broker([], broker__max_workers=50), tokens_left=0)
    hello(broker, b"peer-0", "w-anchor")
    tracemalloc.start()
    try:
        flood(broker, 1, 2_000)
        first, _ = tracemalloc.get_traced_memory()
        flood(broker, 2_001, 6_000)
        second, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grew_mb = (second - first) / 2**20
    assert grew_mb < 4, f"the broker grew by {grew_mb:.1f} MiB over 6,000 more hostile inputs"
    assert broker.registry.live_count() <= 50
    assert sum(broker.bad_messages.values()) >= 3_000, broker.bad_messages
