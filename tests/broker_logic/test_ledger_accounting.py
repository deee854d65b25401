"""The ledger's books to the token: what is spent, assumed, unaccounted and shown, through
every way a permit ends (settle with and without an envelope, release, expiry, a late
settle), with pending gaps open, at the boundaries of the grant rules. Written against the
mutants that survived the first ``make mutate`` (docs/MUTATION.md)."""

from __future__ import annotations

from broker_logic.fakes import obs

from broker.ledger import MAX_PENDING_GAPS, Ledger, Observation


def ledger(first: Observation, **kwargs: int | float) -> Ledger:
    led = Ledger(**kwargs)  # type: ignore[arg-type]
    assert led.observe(first, first.at)
    return led


# --- spent and assumed: every way a permit ends ---------------------------------------------


def test_settles_add_up_what_keepa_says_each_call_consumed() -> None:
    led = ledger(obs(0, 500, refill_in_s=59))
    led.grant("a", 10, 1)
    led.grant("b", 10, 1)
    led.settle("a", obs(1.5, 490, refill_in_s=57.5, source="settle", consumed=10), 2)
    led.settle("b", obs(1.6, 483, refill_in_s=57.4, source="settle", consumed=7), 2)
    assert led.tokens_spent == 17
    # A settle of a permit the ledger never granted (a previous run's) still counts.
    led.settle("old", obs(1.7, 480, refill_in_s=57.3, source="settle", consumed=3), 2)
    assert led.tokens_spent == 20
    assert led.observation is not None and led.observation.tokens_left == 480


def test_assumed_costs_add_up_and_each_release_takes_its_own_back() -> None:
    led = ledger(obs(0, 500, refill_in_s=59))
    led.grant("a", 30, 1)
    led.grant("b", 20, 1)
    led.expire("a", 2)
    led.settle("b", None, 2)  # outcome unknown: assumed spent
    assert led.assumed_spent == 50 and led.tokens_spent == 50
    assert led.projected(2) == 450
    led.release("a", 3)  # "a" never left its worker after all
    assert led.assumed_spent == 20 and led.tokens_spent == 20
    assert led.projected(3) == 480
    assert led.needs_sync  # "b" is still only assumed


def test_a_late_settle_after_expiry_moves_spent_by_the_difference_only() -> None:
    led = ledger(obs(0, 500, refill_in_s=59))
    led.grant("a", 10, 1)
    led.grant("b", 40, 1)
    led.expire("a", 2)
    led.expire("b", 2)
    assert led.tokens_spent == 50
    late = obs(1.5, 500 - 25, refill_in_s=57.5, source="settle", consumed=25, at=3)
    led.settle("b", late, 3)
    assert led.tokens_spent == 10 + 25
    assert led.assumed_spent == 10
    assert led.observation is not None and led.observation.tokens_left == 475


def test_a_settle_without_envelope_of_an_expired_permit_keeps_the_assumption() -> None:
    led = ledger(obs(0, 500, refill_in_s=59))
    led.grant("a", 10, 1)
    led.expire("a", 2)
    led.settle("a", None, 3)
    assert led.assumed_spent == 10 and led.tokens_spent == 10


# --- pending gaps resolved by each way a permit ends ----------------------------------------


def gap_of(pending: int) -> Ledger:
    """A ledger where permits a (10) and b (10) are in flight and a drop of 10 + 10 +
    ``pending`` tokens was seen: ``pending`` waits on both permits."""
    led = ledger(obs(0, 500, refill_in_s=59))
    led.grant("a", 10, 1)
    led.grant("b", 10, 1)
    assert led.observe(obs(2, 480 - pending, refill_in_s=57), 2)
    assert led.unaccounted_pending == pending
    return led


def test_a_gap_waits_for_every_permit_in_flight_then_counts_once() -> None:
    led = gap_of(30)
    led.settle("a", obs(1.5, 490, refill_in_s=57.5, source="settle", consumed=10, at=3), 3)
    assert led.unaccounted == 0 and led.unaccounted_pending == 30
    led.release("b", 4)  # b never ran: the 30 are a stranger's
    assert led.unaccounted == 30 and led.unaccounted_pending == 0


def test_extra_consumption_of_several_permits_adds_up_against_a_gap() -> None:
    led = gap_of(30)
    led.settle("a", obs(1.5, 480, refill_in_s=57.5, source="settle", consumed=20, at=3), 3)
    assert led.unaccounted_pending == 20
    led.settle("b", obs(1.6, 460, refill_in_s=57.4, source="settle", consumed=25, at=3), 3)
    # 10 + 15 of the 30 were the permits' own extra cost: 5 are unaccounted.
    assert led.unaccounted == 5 and led.unaccounted_pending == 0


def test_an_envelope_from_before_the_gap_explains_none_of_it() -> None:
    led = ledger(obs(10, 500, refill_in_s=59))
    led.grant("a", 10, 11)
    assert led.observe(obs(12, 470, refill_in_s=57), 12)  # 20 more than "a"'s 10
    # "a" ran at Keepa time 9 (before the observation that opened the gap): no credit.
    led.settle("a", obs(9, 470, refill_in_s=60, source="settle", consumed=30, at=13), 13)
    assert led.unaccounted == 20


def test_an_envelope_at_the_gaps_own_instant_explains_it() -> None:
    led = ledger(obs(10, 500, refill_in_s=59))
    led.grant("a", 10, 11)
    assert led.observe(obs(12, 470, refill_in_s=57), 12)
    led.settle("a", obs(10, 470, refill_in_s=59, source="settle", consumed=30, at=13), 13)
    assert led.unaccounted == 0 and led.unaccounted_pending == 0


def test_a_permit_ending_unknown_voids_the_gap_and_spares_the_others() -> None:
    led = gap_of(30)
    led.settle("a", None, 3)
    assert led.unaccounted_pending == 0
    led.settle("b", obs(1.6, 470, refill_in_s=57.4, source="settle", consumed=10, at=3), 3)
    assert led.unaccounted == 0


def test_expiry_voids_a_gap_too() -> None:
    led = gap_of(30)
    led.expire("b", 3)
    led.settle("a", obs(1.5, 490, refill_in_s=57.5, source="settle", consumed=10, at=3), 3)
    assert led.unaccounted == 0 and led.unaccounted_pending == 0


def test_two_gaps_on_different_permits_resolve_separately() -> None:
    led = ledger(obs(0, 500, refill_in_s=59))
    led.grant("a", 10, 1)
    assert led.observe(obs(2, 480, refill_in_s=57), 2)  # gap 10 waits on a
    led.grant("b", 10, 3)
    assert led.observe(obs(4, 450, refill_in_s=55), 4)  # gap 10 waits on a and b
    assert led.unaccounted_pending == 20
    led.release("a", 5)
    assert led.unaccounted == 10 and led.unaccounted_pending == 10
    led.release("b", 6)
    assert led.unaccounted == 20 and led.unaccounted_pending == 0


def test_pending_gaps_are_bounded_and_the_oldest_goes_first() -> None:
    led = ledger(obs(0, 10_000, refill_in_s=59, rate=200))
    led.grant("a", 1, 0.5)
    left = 10_000
    for i in range(MAX_PENDING_GAPS + 1):
        # Each observation expects the permit's 1 token gone again: the first gap is 2
        # tokens, every later one 1.
        left -= 3 if i == 0 else 2
        at = 1 + i * 0.001
        assert led.observe(obs(at, left, refill_in_s=58, rate=200), at)
    # The first gap (2) was dropped to keep MAX_PENDING_GAPS: the rest count 1 each.
    assert led.unaccounted_pending == MAX_PENDING_GAPS
    led.release("a", 2)
    assert led.unaccounted == MAX_PENDING_GAPS


# --- unaccounted consumption between observations --------------------------------------------


def test_one_vanished_token_is_unaccounted() -> None:
    led = ledger(obs(0, 500, refill_in_s=30))
    assert led.observe(obs(10, 499, refill_in_s=20), 10)
    assert led.unaccounted == 1


def test_refills_at_a_rate_of_one_are_expected() -> None:
    led = ledger(obs(0, 10, refill_in_s=30, rate=1))
    assert led.observe(obs(100, 12, refill_in_s=50, rate=1), 100)  # refills at 30 and 90
    assert led.unaccounted == 0
    assert led.observe(obs(200, 12, refill_in_s=10, rate=1), 200)  # one at 150: 1 gone
    assert led.unaccounted == 1


def test_refill_steps_are_counted_over_hours_at_a_deep_deficit() -> None:
    # 600 refills of 1 token from -10,000: one token short is one token unaccounted.
    led = ledger(obs(0, -10_000, refill_in_s=30, rate=1))
    assert led.observe(obs(600 * 60, -10_000 + 600 - 1, refill_in_s=30, rate=1), 600 * 60)
    assert led.unaccounted == 1


# --- the grant rules at their boundaries -------------------------------------------------------


def test_a_cost_below_one_is_never_grantable_nor_planned() -> None:
    led = ledger(obs(0, 500, refill_in_s=30))
    assert not led.can_grant(0, 1)
    assert not led.can_grant(-5, 1)
    assert led.earliest_grant_at(0, 1) is None
    assert led.earliest_grant_at(1, 1) == 1


def test_planning_refuses_more_than_max_cost_and_plans_exactly_max_cost() -> None:
    led = ledger(obs(0, 1200, refill_in_s=30), max_deficit=50)
    assert led.max_cost() == 1250
    assert led.earliest_grant_at(1251, 1) is None
    assert led.earliest_grant_at(1250, 1) == 1


def test_max_cost_is_zero_without_a_refill_rate() -> None:
    led = ledger(obs(0, 500, refill_in_s=30, rate=0), max_deficit=50)
    assert led.max_cost() == 0
    assert Ledger().max_cost() == 0
    assert ledger(obs(0, 5, refill_in_s=30, rate=1), max_deficit=50).max_cost() == 110


def test_a_zero_refill_rate_plans_no_grant_beyond_the_balance() -> None:
    led = ledger(obs(0, 5, refill_in_s=30, rate=1))
    assert led.observe(obs(1, 5, refill_in_s=29, rate=0), 1)  # the plan ended
    assert led.earliest_grant_at(6, 2) is None


def test_planning_a_cost_equal_to_what_is_available_is_now() -> None:
    led = ledger(obs(0, 100, refill_in_s=30))
    assert led.earliest_grant_at(100, 1) == 1
    assert led.earliest_grant_at(101, 1) == 30


def test_extra_spend_of_one_token_below_the_soft_floor_is_recharge() -> None:
    led = ledger(obs(0, 30, refill_in_s=30), soft_floor=20, resume_at=60)
    # 30 - 11 = 19 < 20: recharge, so a cost of 1 waits for 60 available (3 steps of 20:
    # at 30, 90, 150).
    assert led.earliest_grant_at(1, 1, extra_spend=11) == 150
    # 30 - 10 = 20 is not below the floor: at once.
    assert led.earliest_grant_at(1, 1, extra_spend=10) == 1
    assert led.earliest_grant_at(1, 1, extra_spend=0) == 1


def test_recharge_waits_for_the_resume_level_exactly() -> None:
    led = ledger(obs(0, 25, refill_in_s=30), soft_floor=20, resume_at=45)
    led.grant("a", 10, 1)  # 15 available: recharge
    assert led.recharge_mode
    # At 35 available (one refill) still short of 45; at 55 it is over.
    assert led.earliest_grant_at(1, 1) == 90
    led.release("a", 2)  # back to 25, still recharge (below 45)
    assert led.earliest_grant_at(1, 2) == 30  # 45 reached at the first refill


def test_a_needed_level_above_the_cap_is_never_planned() -> None:
    led = ledger(obs(0, 100, refill_in_s=30, rate=2))  # cap 120
    led.grant("a", 90, 1)  # 10 available: 120 needs 55 steps of 2, the last at 30 + 54 x 60
    assert led.earliest_grant_at(120, 1) == 30 + 54 * 60
    assert led.earliest_grant_at(121, 1) is None


# --- the status view ---------------------------------------------------------------------------


def test_snapshot_shows_the_books() -> None:
    led = ledger(obs(0, 100, refill_in_s=30), soft_floor=20, resume_at=60, max_deficit=5)
    led.grant("a", 70, 1)  # 30 available
    led.grant("b", 15, 1)  # 15 available: recharge
    led.expire("b", 2)
    assert led.snapshot(10) == {
        "has_observation": True,
        "projected": 85,
        "available": 15,
        "in_flight": 70,
        "in_flight_permits": 1,
        "assumed_spent": 15,
        "refill_rate": 20,
        "refill_period_s": 60.0,
        "refill_in_ms": 20_000,
        "cap": 1200,
        "max_cost": 1205,
        "recharge_mode": True,
        "resume_at": 60,
        "resume_level": 60,
        "soft_floor": 20,
        "max_deficit": 5,
        "needs_sync": True,
        "unaccounted": 0,
        "unaccounted_pending": 0,
        "tokens_spent": 15,
        "tokens_left": 100,
        "keepa_ts_ms": 0,
        "observation_source": "sync",
        "observation_age_s": 10.0,
        "observations_accepted": 1,
        "observations_ignored": 0,
        "plan_changes": 0,
    }


def test_snapshot_before_any_observation() -> None:
    snap = Ledger().snapshot(5)
    assert snap["has_observation"] is False
    assert snap["refill_in_ms"] is None and snap["tokens_left"] is None
    assert snap["keepa_ts_ms"] is None and snap["observation_source"] is None
    assert snap["observation_age_s"] is None
    assert snap["projected"] == 0 and snap["max_cost"] == 0


def test_snapshot_counts_ignored_observations_and_plan_changes() -> None:
    led = ledger(obs(10, 100, refill_in_s=30))
    assert not led.observe(obs(5, 100, refill_in_s=30), 11)
    assert led.observe(obs(12, 100, refill_in_s=28, rate=5), 12)
    snap = led.snapshot(12.5)
    assert snap["observations_accepted"] == 2 and snap["observations_ignored"] == 1
    assert snap["plan_changes"] == 1 and snap["refill_in_ms"] == 27_500
    assert snap["observation_age_s"] == 0.5
    # Past the next refill the countdown restarts; never negative.
    assert led.snapshot(40)["refill_in_ms"] == 60_000
