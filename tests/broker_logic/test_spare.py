"""Use it or lose it: the ledger's figure of tokens the next refill would push over the cap."""

from __future__ import annotations

from broker_logic.fakes import obs

from broker.ledger import Ledger


def ledger_at(left: int, **kwargs: int) -> Ledger:
    led = Ledger(refill_period_s=60.0, **kwargs)  # type: ignore[arg-type]
    assert led.observe(obs(0, left, refill_in_s=30), 0)
    return led


def test_nothing_is_spare_before_an_observation_or_below_the_cap() -> None:
    assert Ledger().spare(0) == 0
    assert ledger_at(1000).spare(0) == 0  # 1000 + 20 < 1200
    assert ledger_at(1180).spare(0) == 0  # exactly the cap at the next step: nothing lost


def test_what_the_next_refill_would_drop_is_spare() -> None:
    led = ledger_at(1190)
    assert led.spare(0) == 10
    assert ledger_at(1200).spare(0) == 20  # full: the whole refill would be lost
    # After the step the balance sits at the cap: the next step drops a whole refill.
    assert led.spare(31) == 20


def test_tokens_in_flight_count_as_spent() -> None:
    led = ledger_at(1200)
    led.grant("p1", 15, 0)
    assert led.spare(0) == 5
    led.grant("p2", 50, 0)
    assert led.spare(0) == 0


def test_the_deficit_is_only_for_a_call_alone_in_flight() -> None:
    """Two calls that together overdraw could reach Keepa in either order, and the second
    would meet a balance <= 0 (a 429 the fleet caused; found by the property test)."""
    led = Ledger(refill_period_s=60.0, soft_floor=0, resume_at=0, max_deficit=40)
    assert led.observe(obs(0, 3, refill_in_s=30), 0)
    assert led.can_grant(3, 0)
    led.grant("p1", 1, 0)
    assert not led.can_grant(3, 0)  # 2 left: 3 more only with a deficit, and p1 is in flight
    assert led.can_grant(2, 0)  # within what is there: fine
    alone = Ledger(refill_period_s=60.0, soft_floor=0, resume_at=0, max_deficit=40)
    assert alone.observe(obs(0, 3, refill_in_s=30), 0)
    assert alone.can_grant(43, 0) and not alone.can_grant(44, 0)  # alone: 3 - 43 = -40
