"""``common.say_once``: one line when a failure begins, one when it ends, a count a minute."""

from __future__ import annotations

import logging

import pytest

from common.say_once import SayOnce

log = logging.getLogger("test.say_once")


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == log.name]


def test_a_repeating_failure_is_said_at_its_edges_and_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=log.name)
    say = SayOnce(log, "storage")
    assert say.failing(100.0, "disk_full", "full")
    for i in range(1, 150):  # a retry a second for 150 s
        assert not say.failing(100.0 + i, "disk_full", "full")
    assert say.ok(250.0, "back")
    assert not say.ok(251.0)
    lines = messages(caplog)
    assert lines[0] == "storage: disk_full began: full"
    assert [ln for ln in lines if "still" in ln] == [
        "storage: disk_full still, for 60 s: 60 times in the last 60 s: full",
        "storage: disk_full still, for 120 s: 60 times in the last 60 s: full",
    ]
    assert lines[-1] == "storage: disk_full ended after 150.0 s (150 times): back"
    assert len(lines) == 4


def test_another_state_ends_the_first(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=log.name)
    say = SayOnce(log, "Keepa")
    say.failing(0.0, "keepa_unreachable")
    assert say.failing(2.0, "key_no_access")
    assert say.state == "key_no_access" and say.since == 2.0
    assert messages(caplog) == [
        "Keepa: keepa_unreachable began",
        "Keepa: keepa_unreachable ended after 2.0 s (1 times): became key_no_access",
        "Keepa: key_no_access began",
    ]
