"""Hypothesis strategies for the wire format, and how many inputs a fuzz target must run.

``FLEET_FUZZ_EXAMPLES`` (default 10,000) is the number of inputs each fuzz target feeds its
code under test; ``make bench-full`` (``bench/soak.py``) raises it. Each hypothesis example
carries a batch of inputs, so the targets count inputs, not examples, and run until they
have fed at least that many.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable
from typing import Any

import msgpack
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from common import protocol

FUZZ_INPUTS = int(os.environ.get("FLEET_FUZZ_EXAMPLES", "10000"))
# The documented codes of the ProtocolError that ``protocol.decode`` raises.
DECODE_CODES = frozenset(
    {"too_large", "bad_msgpack", "bad_envelope", "bad_version", "unknown_type", "bad_fields"}
)
MAX_ROUNDS = 1000  # bound on the calls of a @given function while counting up to FUZZ_INPUTS

FUZZ_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)

INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
EDGE_INTS = st.sampled_from([0, 1, -1, 2**31 - 1, 2**31, 2**63 - 1, -(2**63), 2**64 - 1])
INTS = st.one_of(EDGE_INTS, st.integers(-1000, 1000), INT64)
FLOATS = st.one_of(
    st.floats(allow_nan=False),
    st.sampled_from([0.0, -0.0, 1e-300, 1e300, float("inf"), float("-inf")]),
)
TEXT = st.text(max_size=40)

# Any value msgpack can carry (a map's keys are strings: the decoder's strict_map_key).
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT, st.binary(max_size=40))
MSGPACK_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(TEXT, inner, max_size=5)),
    max_leaves=12,
)
JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), FLOATS, TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=10,
)


def _field_strategy(accepted: tuple[type, ...]) -> st.SearchStrategy[Any]:
    options: list[st.SearchStrategy[Any]] = []
    for kind in accepted:
        if kind is bool:
            options.append(st.booleans())
        elif kind is int:
            options.append(INTS)
        elif kind is float:
            options.append(FLOATS)
        elif kind is str:
            options.append(TEXT)
        elif kind is dict:
            options.append(st.dictionaries(TEXT, JSONISH, max_size=5))
        elif kind is type(None):
            options.append(st.none())
        else:  # pragma: no cover - a new field type needs a strategy here
            raise TypeError(f"no strategy for {kind}")
    return st.one_of(options)


def message_strategy(cls: type[protocol.Message]) -> st.SearchStrategy[protocol.Message]:
    """Every message of ``cls`` the schema allows (optional fields sometimes left out)."""
    schema = protocol._schema(cls)
    required = {n: _field_strategy(acc) for n, (acc, req) in schema.items() if req}
    optional = {n: _field_strategy(acc) for n, (acc, req) in schema.items() if not req}
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: cls(**kw))


MESSAGES: st.SearchStrategy[protocol.Message] = st.one_of(
    [message_strategy(cls) for cls in protocol.MESSAGE_TYPES.values()]
)


def fields_of(msg: protocol.Message) -> dict[str, Any]:
    return {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}


def packed(obj: Any) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


# --- mutations of a valid frame ---------------------------------------------------------
# Hypothesis draws a message and a seeded ``random.Random``; each example then expands into
# a batch of inputs by the mutations below (drawing every input through hypothesis would
# cost a millisecond each; these cost microseconds, and the batch still shrinks with its
# seed and message).

BATCH = 20  # inputs per hypothesis example
TYPE_NAMES = sorted(protocol.MESSAGE_TYPES)
ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    0.5,
    float("inf"),
    float("-inf"),
    float("nan"),
    "",
    "x" * 300,
    b"",
    b"\x00\xff",
    [],
    [1, [2, [3]]],
    {},
    {"a": {"b": {"c": [None]}}},
    "\u0000",
    "\U0001f600",
]
SHORT_FRAMES = [
    b"",
    b"\xc1",
    b"\x93",
    b"\x93\x01",
    b"\xdd\xff\xff\xff\xff",
    b"\xdf\xff\xff\xff\xff",
]


def any_value(rng: random.Random, depth: int = 2) -> Any:
    """A value msgpack can carry, from a few odd ones and random ones."""
    roll = rng.random()
    if roll < 0.4:
        return rng.choice(ODD_VALUES)
    if roll < 0.55:
        return rng.randint(-(2**63), 2**64 - 1)
    if roll < 0.65:
        return rng.uniform(-1e9, 1e9)
    if roll < 0.8:
        return "".join(chr(rng.randint(0, 0x2FF)) for _ in range(rng.randint(0, 12)))
    if depth <= 0 or roll < 0.9:
        return rng.randbytes(rng.randint(0, 12))
    if roll < 0.95:
        return [any_value(rng, depth - 1) for _ in range(rng.randint(0, 4))]
    return {str(any_value(rng, 0)): any_value(rng, depth - 1) for _ in range(rng.randint(0, 4))}


def mutated_object(rng: random.Random, msg: protocol.Message) -> bytes:
    """The message's ``[version, type, fields]`` with one structural change."""
    version: Any = protocol.VERSION
    type_: Any = msg.TYPE
    fields = fields_of(msg)
    how = rng.randint(0, 9)
    if how == 0 and fields:
        fields.pop(rng.choice(sorted(fields)))
    elif how == 1:
        fields[str(any_value(rng, 0))] = any_value(rng)
    elif how == 2 and fields:
        fields[rng.choice(sorted(fields))] = any_value(rng)
    elif how == 3:
        version = rng.choice([0, 2, -1, True, "1", None, 1.0, 2**64 - 1])
    elif how == 4:
        type_ = rng.choice([*TYPE_NAMES, "hello", "", None, 7, "HELLO\x00"])
    elif how == 5:
        return packed([any_value(rng) for _ in range(rng.randint(0, 5))])
    elif how == 6:
        return packed([version, type_, any_value(rng)])
    elif how == 7:
        return packed([version, type_, fields, any_value(rng)])
    elif how == 8:
        return packed({"version": version, "type": type_, "fields": fields})
    return packed([version, type_, fields])


def mutated_bytes(rng: random.Random, frame: bytes) -> bytes:
    """The encoded frame with bytes flipped, cut, inserted or appended."""
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        how = rng.randint(0, 3)
        at = rng.randint(0, max(0, len(data) - 1))
        if how == 0 and data:
            data[at] = rng.randint(0, 255)
        elif how == 1:
            del data[at:]
        elif how == 2:
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        else:
            data += rng.randbytes(rng.randint(1, 8))
    return bytes(data)


def one_frame(rng: random.Random, msg: protocol.Message) -> bytes:
    """One input: the valid frame, a structural or byte mutation, any msgpack, any bytes."""
    kind = rng.randint(0, 9)
    if kind <= 3:
        return mutated_object(rng, msg)
    if kind <= 6:
        return mutated_bytes(rng, msg.encode())
    if kind == 7:
        return packed(any_value(rng, 3))
    if kind == 8:
        return rng.randbytes(rng.randint(0, 300))
    return rng.choice(SHORT_FRAMES)


def run_counted(target: Callable[[], None], counter: Callable[[], int]) -> int:
    """Call the @given ``target`` until ``counter()`` reaches FUZZ_INPUTS (bounded)."""
    for _ in range(MAX_ROUNDS):
        if counter() >= FUZZ_INPUTS:
            break
        target()
    return counter()
