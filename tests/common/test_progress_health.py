"""``keepa-fleet run``'s progress line names an active problem, and says nothing extra
when all is well."""

from __future__ import annotations

from typing import Any

from doubles import core_settings

from broker.core import BrokerCore
from common.run import progress_line


def state(problems: list[dict[str, object]]) -> dict[str, Any]:
    """A whole STATUS_REPLY state (a real broker core's) with these health problems."""
    full = BrokerCore(core_settings(), send=lambda frames: True).status(0.0)
    full["health"] = {"ok": not problems, "problems": problems}
    return full


def test_the_progress_line_shows_the_problem() -> None:
    problem = {"problem": "key_no_access", "since_s": 12.0, "says": "Keepa key has no access"}
    line = progress_line(state([problem]), 30.0)
    assert line.endswith("| health: Keepa key has no access (since 12.0s)"), line


def test_the_progress_line_is_unchanged_when_healthy() -> None:
    line = progress_line(state([]), 30.0)
    assert "tokens" in line and "health" not in line, line
