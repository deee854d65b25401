"""Property-based fuzzing of ``common.protocol.decode``: at least ``FLEET_FUZZ_EXAMPLES``
frames. Hypothesis draws a valid message of any type (every field over its whole declared
type, edge values included) and a seed; each example checks that the message round-trips,
then feeds ``decode`` a batch of inputs made from it: structural mutations of its
``[version, type, fields]``, byte mutations of its frame, arbitrary msgpack and arbitrary
bytes. Each input either decodes into a message whose every field has its declared type
(and which encodes and decodes back to itself), or raises ProtocolError with one of the
documented codes. Nothing else ever escapes."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from fuzz.fuzz_support import (
    BATCH,
    DECODE_CODES,
    FUZZ_INPUTS,
    FUZZ_SETTINGS,
    MESSAGES,
    fields_of,
    one_frame,
    run_counted,
)
from hypothesis import given
from hypothesis import strategies as st

from common import protocol
from common.errors import ProtocolError


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_nan(v) for v in value)
    return False


def check_frame(frame: bytes, counted: Counter[str]) -> None:
    try:
        msg = protocol.decode(frame)
    except ProtocolError as exc:
        assert exc.code in DECODE_CODES, exc.code
        counted["refused"] += 1
        return
    counted["decoded"] += 1
    cls = protocol.MESSAGE_TYPES[msg.TYPE]
    assert type(msg) is cls
    for name, (accepted, _) in protocol._schema(cls).items():
        value = getattr(msg, name)
        if isinstance(value, bool):
            assert bool in accepted, (name, value)
        else:
            assert isinstance(value, accepted), (name, value)
    again = protocol.decode(msg.encode())
    if not _has_nan(fields_of(msg)):
        assert again == msg


def fuzz_decode(counted: Counter[str]) -> Callable[[], None]:
    """The @given target, counting into this run's ``counted`` (a rerun in one process
    starts from zero and fuzzes again)."""

    @FUZZ_SETTINGS
    @given(MESSAGES, st.integers(0, 2**32 - 1))
    def run(msg: protocol.Message, seed: int) -> None:
        rng = random.Random(seed)
        frame = msg.encode()
        again = protocol.decode(frame, max_bytes=max(len(frame), protocol.MAX_MESSAGE_BYTES))
        if not _has_nan(fields_of(msg)):
            assert again == msg
        counted["round_trips"] += 1
        for _ in range(BATCH):
            check_frame(one_frame(rng, msg), counted)

    return run


def test_decode_never_raises_anything_but_protocol_error() -> None:
    counted: Counter[str] = Counter()
    total = run_counted(fuzz_decode(counted), lambda: counted["decoded"] + counted["refused"])
    assert total >= FUZZ_INPUTS
    # The mix reaches both sides: frames that decode and frames that are refused.
    assert counted["decoded"] > total // 20 and counted["refused"] > total // 4, counted
    assert counted["round_trips"] >= FUZZ_INPUTS // BATCH
