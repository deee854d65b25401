"""The wire format: every message round-trips; every malformed frame raises ProtocolError
with its code, never anything else."""

from __future__ import annotations

import contextlib
import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import protocol as p
from common.errors import ProtocolError

SAMPLES: list[p.Message] = [
    p.Hello("w1", 42, "host", 12345, "ingest", "0.1.0"),
    p.Welcome("b1", 1.0, 5, 150.0, max_cost=1200),
    p.Heartbeat(progress=7, waiting=True, stage="ingest", items_done=3, info={"a": [1, 2]}),
    p.Request(seq=1, cost=250, priority=2, deadline_s=30.0),
    p.Grant(seq=1, permit="p-1", cost=250, lease_ttl_s=150.0),
    p.Reject(seq=1, reason="too_large", max_cost=300),
    p.Cancel(seq=1),
    p.Settle("p-1", "ok", {"tokensLeft": 3}, 200),
    p.Bye("sigterm"),
    p.Kill("silent"),
    p.Disconnect("unknown worker"),
    p.Status(),
    p.StatusReply({"tokens": {"now": 3}}),
    p.Error("bad_msgpack", "x"),
]


def test_every_type_is_sampled() -> None:
    assert {type(m).TYPE for m in SAMPLES} == set(p.MESSAGE_TYPES)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).TYPE)
def test_round_trip(msg: p.Message) -> None:
    assert p.decode(p.encode(msg)) == msg


def test_every_frame_carries_the_version() -> None:
    for msg in SAMPLES:
        assert msgpack.unpackb(msg.encode())[0] == p.VERSION


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"", "bad_msgpack"),
        (b"\xc1", "bad_msgpack"),
        (b"x" * (p.MAX_MESSAGE_BYTES + 1), "too_large"),
        (msgpack.packb({"a": 1}), "bad_envelope"),
        (msgpack.packb([p.VERSION, "BYE"]), "bad_envelope"),
        (msgpack.packb([p.VERSION + 1, "BYE", {}]), "bad_version"),
        (msgpack.packb([True, "BYE", {}]), "bad_version"),
        (msgpack.packb([p.VERSION, "NOPE", {}]), "unknown_type"),
        (msgpack.packb([p.VERSION, 7, {}]), "unknown_type"),
        (msgpack.packb([p.VERSION, "BYE", []]), "bad_fields"),
        (msgpack.packb([p.VERSION, "REQUEST", {"seq": 1}]), "bad_fields"),
        (msgpack.packb([p.VERSION, "REQUEST", {"seq": 1, "cost": "5"}]), "bad_fields"),
        (msgpack.packb([p.VERSION, "REQUEST", {"seq": True, "cost": 5}]), "bad_fields"),
        (msgpack.packb([p.VERSION, "REQUEST", {"seq": 1, "cost": 5, "x": 0}]), "bad_fields"),
        (msgpack.packb([p.VERSION, "HEARTBEAT", {"info": [1]}]), "bad_fields"),
        (
            msgpack.packb([p.VERSION, "SETTLE", {"permit": "p", "status": "ok", "envelope": 3}]),
            "bad_fields",
        ),
    ],
)
def test_bad_frames(frame: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        p.decode(frame)
    assert info.value.code == code


def test_int_accepted_for_float_fields() -> None:
    msg = p.decode(msgpack.packb([p.VERSION, "REQUEST", {"seq": 1, "cost": 5, "deadline_s": 3}]))
    assert isinstance(msg, p.Request) and msg.deadline_s == 3.0


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes_only_ever_raise_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        p.decode(data)


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(SAMPLES), st.data())
def test_mutated_fields_only_ever_raise_protocol_error(msg: p.Message, data: st.DataObject) -> None:
    fields = {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}
    if fields:
        name = data.draw(st.sampled_from(sorted(fields)))
        fields[name] = data.draw(_values)
    frame = msgpack.packb([p.VERSION, msg.TYPE, fields], use_bin_type=True)
    try:
        decoded = p.decode(frame)
    except ProtocolError:
        return
    assert type(decoded) is type(msg)
