"""Bad input never stops the broker: each case is answered (ERROR/DISCONNECT) or dropped,
counted in status by code, and a normal permit round trip still works afterwards. Then a
fuzz run of 10,000 random and mutated messages."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import zmq
from broker_net.net_support import FakeKeepa, broker_settings, status
from doubles import Peer
from support import wait_until

from broker.server import MAX_TRANSPORT_BYTES, Broker
from common import protocol

FUZZ_MESSAGES = 10_000
FUZZ_SEED = 20240611


def round_trip(peer: Peer, keepa: FakeKeepa, worker_id: str, seq: int = 1) -> None:
    """HELLO, REQUEST -> GRANT -> SETTLE, and the settle shows up in status."""
    peer.hello(worker_id)
    peer.send(protocol.Request(seq=seq, cost=3))
    grant = peer.expect(protocol.Grant)
    peer.send(protocol.Settle(grant.permit, "ok", keepa.envelope(consumed=3).to_wire(), 200))


def packed(obj: Any) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


BAD_CASES: list[tuple[str, list[bytes], str]] = [
    ("garbage", [b"\xc1\xc1\xc1 not msgpack"], "bad_msgpack"),
    ("empty", [b""], "bad_msgpack"),
    ("not a list", [packed({"a": 1})], "bad_envelope"),
    ("short list", [packed([1, "HELLO"])], "bad_envelope"),
    ("wrong version", [packed([99, "STATUS", {}])], "bad_version"),
    ("unknown type", [packed([protocol.VERSION, "GIMME", {}])], "unknown_type"),
    ("missing field", [packed([protocol.VERSION, "REQUEST", {"seq": 1}])], "bad_fields"),
    (
        "wrong field type",
        [packed([protocol.VERSION, "REQUEST", {"seq": "one", "cost": 5}])],
        "bad_fields",
    ),
    (
        "unknown field",
        [packed([protocol.VERSION, "STATUS", {"please": True}])],
        "bad_fields",
    ),
    ("too large", [b"\x00" * (protocol.MAX_MESSAGE_BYTES + 1)], "too_large"),
    ("two frames", [protocol.Status().encode(), b"extra"], "bad_frames"),
    ("four frames", [b"a", b"b", b"c"], "bad_frames"),
    ("a broker's message", [protocol.Grant(1, "p", 5, 1.0).encode()], "unexpected_type"),
    (
        "a nonsense HELLO",
        [protocol.Hello("", -1, "h", 1, "r", "v").encode()],
        "bad_hello",
    ),
]


@pytest.mark.parametrize(("name", "frames", "code"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_is_answered_and_counted(
    serve: Callable[..., Broker],
    peers: Callable[..., Peer],
    fake_keepa: FakeKeepa,
    name: str,
    frames: list[bytes],
    code: str,
) -> None:
    broker = serve()
    bad = peers(broker.address)
    for _ in range(3):
        bad.send_raw(*frames)
        err = bad.expect(protocol.Error)
        assert err.code == code
    assert status(broker.address)["bad_messages"][code] == 3
    round_trip(peers(broker.address), fake_keepa, "good")
    wait_until(lambda: status(broker.address)["permits"]["settled"] == 1, 10)


def test_a_bad_settle_envelope_is_counted_and_the_permit_still_settles(
    serve: Callable[..., Broker], peers: Callable[..., Peer]
) -> None:
    broker = serve()
    peer = peers(broker.address)
    peer.hello("w1")
    peer.send(protocol.Request(seq=1, cost=3))
    grant = peer.expect(protocol.Grant)
    peer.send(protocol.Settle(grant.permit, "ok", {"tokensLeft": "lots"}, 200))
    assert peer.expect(protocol.Error).code == "bad_envelope"
    s = wait_until(
        lambda: (lambda s: s if s["permits"]["settled"] == 1 else None)(status(broker.address)),
        10,
    )
    assert s["bad_messages"]["bad_envelope"] == 1
    assert s["permits"]["unknown_outcomes"] == 1  # no envelope: the cost is assumed spent


def test_a_frame_beyond_the_transport_limit_is_dropped(
    serve: Callable[..., Broker], peers: Callable[..., Peer], fake_keepa: FakeKeepa
) -> None:
    """ZeroMQ itself drops the connection of a peer sending more than MAX_TRANSPORT_BYTES
    (nothing to count: the frame never reaches the broker); the broker keeps serving."""
    broker = serve()
    huge = peers(broker.address)
    huge.send_raw(b"\x00" * (MAX_TRANSPORT_BYTES + 1))
    # A marker on the same socket: its ERROR comes back once the peer has reconnected
    # (ZeroMQ drops the connection, and what was queued behind the huge frame with it).
    # Every reply before it is looked at: the huge frame must not have reached the broker.
    replies: list[protocol.Message] = []
    deadline = time.monotonic() + 30
    attempt = 0
    while not any(isinstance(r, protocol.Error) and "MARK" in r.detail for r in replies):
        assert time.monotonic() < deadline, f"no reply to the marker; replies {replies}"
        huge.send_raw(packed([protocol.VERSION, f"MARK-{attempt}", {}]))
        attempt += 1
        while huge.sock.poll(1000):
            replies.append(protocol.decode(huge.sock.recv(), max_bytes=protocol.MAX_REPLY_BYTES))
    codes = [r.code for r in replies if isinstance(r, protocol.Error)]
    assert "too_large" not in codes, codes  # dropped by ZeroMQ, never read by the broker
    assert "too_large" not in status(broker.address)["bad_messages"]
    round_trip(peers(broker.address), fake_keepa, "good")
    wait_until(lambda: status(broker.address)["permits"]["settled"] == 1, 10)


def test_a_req_socket_gets_status_too(serve: Callable[..., Broker], zctx: zmq.Context[Any]) -> None:
    broker = serve()
    req = zctx.socket(zmq.REQ)
    req.linger = 0
    try:
        req.connect(broker.address)
        req.send(protocol.Status().encode())
        assert req.poll(10_000)
        reply = protocol.decode(req.recv(), max_bytes=protocol.MAX_REPLY_BYTES)
        assert isinstance(reply, protocol.StatusReply)
        assert reply.state["broker_id"] == broker.broker_id
    finally:
        req.close(linger=0)


# --- fuzzing -----------------------------------------------------------------------------


def valid_frames() -> list[bytes]:
    """Well-formed messages a peer could send (HELLO from a host that is not this one, so
    no fuzzed registration can ever lead to a signal)."""
    return [
        protocol.Hello("fuzz-1", 999_999, "fuzz-host", 12345, "fuzz", "0").encode(),
        protocol.Heartbeat(
            progress=3, waiting=True, stage="x", items_done=1, info={"a": 1}
        ).encode(),
        protocol.Request(seq=1, cost=5, priority=1, deadline_s=0.5).encode(),
        protocol.Cancel(seq=1).encode(),
        protocol.Settle("x-1", "ok", {"timestamp": 1, "tokensLeft": 1}, 200).encode(),
        protocol.Bye("fuzz").encode(),
        protocol.Status().encode(),
    ]


WEIRD_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    1e308,
    float("nan"),
    float("inf"),
    "",
    "x" * 300,
    "\u0000\n",
    b"\xff\x00",
    [],
    [1, [2, [3]]],
    {},
    {"k": {"k": {"k": None}}},
    {1: 2},
]


def mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        if op == 0 and data:
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and data:
            del data[rng.randrange(len(data)) :]
        elif op == 2:
            i = rng.randrange(len(data) + 1)
            data[i:i] = rng.randbytes(rng.randint(1, 8))
        else:
            data += data[: rng.randint(0, len(data))]
    return bytes(data)


def wrong_types(rng: random.Random, frame: bytes) -> bytes:
    version, type_, fields = msgpack.unpackb(frame, raw=False)
    fields = dict(fields)
    if fields and rng.random() < 0.8:
        fields[rng.choice(list(fields))] = rng.choice(WEIRD_VALUES)
    else:
        fields[rng.choice(["extra", "", "seq"])] = rng.choice(WEIRD_VALUES)
    if rng.random() < 0.1:
        version = rng.choice(WEIRD_VALUES)
    if rng.random() < 0.1:
        type_ = rng.choice([*protocol.MESSAGE_TYPES, *map(str, WEIRD_VALUES)])
    try:
        return packed([version, type_, fields])
    except (TypeError, ValueError, OverflowError):
        return packed([version, str(type_), {}])


def fuzz_frames(rng: random.Random, valid: list[bytes]) -> list[bytes]:
    kind = rng.randrange(6)
    if kind == 0:
        return [rng.randbytes(rng.randint(0, 200))]
    if kind == 1:
        return [mutate(rng, rng.choice(valid))]
    if kind == 2:
        return [wrong_types(rng, rng.choice(valid))]
    if kind == 3:
        return [
            rng.choice([rng.randbytes(8), rng.choice(valid), b""]) for _ in range(rng.randint(2, 5))
        ]
    if kind == 4:
        return [packed(rng.choice(WEIRD_VALUES[:-1]))]
    return [rng.choice(valid)]  # valid traffic mixed in: HELLOs, requests, settles


def test_fuzz_then_a_normal_round_trip(
    serve: Callable[..., Broker],
    peers: Callable[..., Peer],
    fake_keepa: FakeKeepa,
    zctx: zmq.Context[Any],
) -> None:
    broker = serve(broker_settings(broker__liveness=100), this_host="not-this-machine")
    rng = random.Random(FUZZ_SEED)
    valid = valid_frames()
    fuzzers = [peers(broker.address) for _ in range(4)]
    replies = 0
    deadline = time.monotonic() + 120
    for i in range(FUZZ_MESSAGES):
        assert time.monotonic() < deadline, "fuzzing took too long"
        rng.choice(fuzzers).sock.send_multipart(fuzz_frames(rng, valid))
        if i % 50 == 0:
            for f in fuzzers:  # keep the replies flowing (every one must decode)
                while f.sock.poll(0):
                    # [b"", reply] when the junk looked like a REQ envelope
                    frames = f.sock.recv_multipart()
                    assert len(frames) == 1 or frames[:-1] == [b""], frames
                    protocol.decode(frames[-1], max_bytes=protocol.MAX_REPLY_BYTES)
                    replies += 1
    assert replies > 0
    for n, f in enumerate(fuzzers):
        # A marker no fuzzed frame can produce; its ERROR (which names it) comes back after
        # everything sent before it on that socket was handled. Re-sent should a reply be
        # dropped on a full queue.
        deadline = time.monotonic() + 30
        found = False
        attempt = 0
        while not found:
            assert time.monotonic() < deadline, "no reply to the end marker"
            marker = f"END-MARKER-{n}-{attempt}"
            attempt += 1
            f.send_raw(packed([protocol.VERSION, marker, {}]))
            while not found and f.sock.poll(1000):
                frames = f.sock.recv_multipart()
                reply = protocol.decode(frames[-1], max_bytes=protocol.MAX_REPLY_BYTES)
                found = isinstance(reply, protocol.Error) and marker in reply.detail
    s = status(broker.address)
    bad = s["bad_messages"]
    assert sum(bad.values()) > FUZZ_MESSAGES // 2, bad
    for code in ("bad_msgpack", "bad_fields", "bad_frames", "bad_envelope"):
        assert bad.get(code, 0) > 0, (code, bad)
    assert "internal_error" not in bad, bad
    round_trip(peers(broker.address), fake_keepa, "after-the-fuzz")
    wait_until(
        lambda: any(
            w["id"] == "after-the-fuzz" and w["settles"] == 1
            for w in status(broker.address)["workers"]
        ),
        10,
        message="the round trip after the fuzz",
    )
