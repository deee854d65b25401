"""Lifecycles as data: each one a table of the transitions it allows, and one function that
performs and logs a transition.

The tables themselves are next to what they govern: permits and worker records in
``broker/states.py``, the worker's broker link in ``workers/link.py``. A transition the table
does not allow is a bug: ``transition`` raises ``InvalidTransition`` instead of making it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, Protocol


class InvalidTransition(RuntimeError):
    """A state change that its lifecycle's table does not allow (a bug)."""


class HasState(Protocol):
    state: str


@dataclasses.dataclass(frozen=True)
class Lifecycle:
    """``edges`` maps each allowed (from, to) to why it happens (for the docs and logs)."""

    name: str
    states: tuple[str, ...]
    initial: str
    edges: Mapping[tuple[str, str], str]

    def __post_init__(self) -> None:
        unknown = {s for edge in self.edges for s in edge} - set(self.states)
        if unknown or self.initial not in self.states:
            raise ValueError(f"{self.name}: states {sorted(unknown)} are not in the lifecycle")

    def allows(self, old: str, new: str) -> bool:
        return (old, new) in self.edges

    def table(self) -> str:
        """The transitions as text (for docs): ``old -> new   why``."""
        return "\n".join(f"{a} -> {b}   {why}" for (a, b), why in self.edges.items())


def transition(
    lifecycle: Lifecycle,
    obj: HasState,
    new: str,
    *,
    logger: logging.Logger,
    subject: Any = "",
    now: float | None = None,
) -> bool:
    """Move ``obj.state`` to ``new`` (and ``obj.state_since`` to ``now`` when given); False
    when it already was there. Logged at DEBUG: the callers log what matters once."""
    old = obj.state
    if old == new:
        return False
    if (old, new) not in lifecycle.edges:
        raise InvalidTransition(f"{lifecycle.name} {subject}: {old} -> {new} is not allowed")
    obj.state = new
    if now is not None:
        setattr(obj, "state_since", now)  # noqa: B010 (not every state holder has it)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s %s: %s -> %s", lifecycle.name, subject, old, new)
    return True
