"""The health problems of a STATUS_REPLY state, as text: one line for progress lines, a block
for ``keepa-fleet status``. Read by ``broker/status_cli.py`` and ``common/run.py`` (which may
not import ``broker``); the problems themselves are ``broker/health.py``'s."""

from __future__ import annotations

from typing import Any


def problems_of(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The active problems of a STATUS_REPLY state (``broker.health``)."""
    health = state.get("health")
    problems = health.get("problems") if isinstance(health, dict) else None
    return [p for p in problems or [] if isinstance(p, dict)]


def health_line(state: dict[str, Any]) -> str:
    """One line: ``health: ok`` or the problems, each with since-when (for progress lines)."""
    problems = problems_of(state)
    if not problems:
        return "health: ok"
    return "health: " + "; ".join(
        f"{p.get('says', p.get('problem', '?'))} (since {seconds(p.get('since_s'))})"
        for p in problems
    )


def health_lines(state: dict[str, Any]) -> list[str]:
    """``health: ok``, or a count and one line per problem: what, since when, what the fleet
    does about it."""
    problems = problems_of(state)
    if not problems:
        return ["health: ok"]
    lines = [f"health: {len(problems)} problem{'s' if len(problems) > 1 else ''}"]
    for p in problems:
        lines.append(
            f"  {p.get('says', p.get('problem', '?'))}: since {seconds(p.get('since_s'))} "
            f"ago; {p.get('does', '')}"
        )
    return lines


def seconds(value: Any) -> str:
    """A duration for people: ``12.3s`` under 100 s, else ``m:ss`` or ``h:mm:ss``."""
    if not isinstance(value, int | float):
        return "-"
    return f"{value:.1f}s" if value < 100 else duration(value)


def duration(value: Any) -> str:
    if not isinstance(value, int | float):
        return "?"
    total = int(value)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"
