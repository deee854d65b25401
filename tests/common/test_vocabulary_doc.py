"""docs/ARCHITECTURE.md's message table names every message, field and allowed value of
common/protocol.py: a word added to the protocol without the doc fails here."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

import pytest

from broker import states
from common import protocol

DOC = Path(__file__).resolve().parents[2] / "docs" / "ARCHITECTURE.md"


def messages_section() -> str:
    text = DOC.read_text()
    start = text.index("## Messages, and every value a field may take")
    return text[start : text.index("\n## ", start + 1)]


def test_every_message_and_field_is_in_the_table() -> None:
    section = messages_section()
    for type_, cls in protocol.MESSAGE_TYPES.items():
        row = next((ln for ln in section.splitlines() if ln.startswith(f"| `{type_}` |")), None)
        assert row is not None, type_
        for f in dataclasses.fields(cls):
            assert f"`{f.name}`" in row, (type_, f.name)


@pytest.mark.parametrize(
    ("label", "values"),
    [
        ("`HELLO.role`", list(protocol.Role)),
        ("`SETTLE.status`", list(protocol.SettleStatus)),
        ("`REJECT.reason`", list(protocol.RejectReason)),
        ("`ERROR.code`", list(protocol.ErrorCode)),
        ("`KILL.reason`", list(states.KILL_REASONS)),
    ],
)
def test_every_allowed_value_is_in_the_table(label: str, values: list[enum.StrEnum]) -> None:
    row = next(ln for ln in messages_section().splitlines() if ln.startswith(f"| {label} |"))
    listed = row.split("|")[2].split("(")[0]
    assert {v.strip(" `") for v in listed.split(",")} == {str(v) for v in values}


def test_the_protocol_version_is_the_one_documented() -> None:
    assert f"protocol version\n{protocol.VERSION};" in messages_section()
