"""The lifecycle tables: every allowed transition is made, every other one refused."""

from __future__ import annotations

import dataclasses
import itertools
import logging

import pytest

from broker import states
from common.lifecycle import InvalidTransition, Lifecycle, transition
from workers.link import LINK

LIFECYCLES = {lc.name: lc for lc in (states.PERMIT, states.WORKER, LINK)}
log = logging.getLogger("test")


@dataclasses.dataclass
class Thing:
    state: str
    state_since: float = 0.0


@pytest.mark.parametrize("name", sorted(LIFECYCLES))
def test_walk_the_table(name: str) -> None:
    lc = LIFECYCLES[name]
    for old, new in itertools.product(lc.states, repeat=2):
        thing = Thing(old)
        if old == new:
            assert transition(lc, thing, new, logger=log, now=5.0) is False
            assert thing.state_since == 0.0
        elif lc.allows(old, new):
            assert transition(lc, thing, new, logger=log, now=5.0) is True
            assert (thing.state, thing.state_since) == (new, 5.0)
        else:
            with pytest.raises(InvalidTransition):
                transition(lc, thing, new, logger=log, now=5.0)
            assert (thing.state, thing.state_since) == (old, 0.0)


@pytest.mark.parametrize("name", sorted(LIFECYCLES))
def test_every_state_is_reachable_from_the_initial_one(name: str) -> None:
    lc = LIFECYCLES[name]
    seen, frontier = {lc.initial}, [lc.initial]
    while frontier:
        state = frontier.pop()
        for a, b in lc.edges:
            if a == state and b not in seen:
                seen.add(b)
                frontier.append(b)
    assert seen == set(lc.states)


def test_the_terminal_states() -> None:
    for lc, terminal in (
        (states.PERMIT, {states.SETTLED, states.EXPIRED, states.REJECTED, states.CANCELLED}),
        (states.WORKER, {states.GONE}),
        (LINK, {"closed"}),
    ):
        assert {s for s in lc.states if not any(a == s for a, _ in lc.edges)} == terminal


def test_a_table_naming_an_unknown_state_is_refused() -> None:
    with pytest.raises(ValueError, match="nowhere"):
        Lifecycle(name="x", states=("a",), initial="a", edges={("a", "nowhere"): ""})
