"""The token ledger on a fake clock: projection, ordering, in flight, recharge, deficit,
plan changes, unaccounted consumption, expiry and unknown outcomes, exact planning."""

from __future__ import annotations

import pytest
from broker_logic.fakes import obs

from broker.ledger import Ledger, Observation
from common.keepa import TokenEnvelope


def ledger(first: Observation, **kwargs: int | float) -> Ledger:
    led = Ledger(**kwargs)  # type: ignore[arg-type]
    assert led.observe(first, first.at)
    return led


# --- projection ---------------------------------------------------------------------------


def test_projection_adds_the_rate_at_each_refill_step() -> None:
    led = ledger(obs(0, 100, refill_in_s=10))
    assert led.projected(9.999) == 100
    assert led.projected(10) == 120
    assert led.projected(69.999) == 120
    assert led.projected(70) == 140
    assert led.projected(10 + 60 * 9) == 100 + 20 * 10
    assert led.next_refill_at(0) == 10
    assert led.next_refill_at(10) == 70
    assert led.next_refill_at(69.5) == 70


def test_projection_is_capped_at_60_times_the_rate() -> None:
    led = ledger(obs(0, 1190, refill_in_s=10))
    assert led.cap == 1200
    assert led.projected(10) == 1200
    assert led.projected(70) == 1200
    assert led.projected(10 + 60 * 500) == 1200


def test_projection_climbs_out_of_a_negative_balance_to_the_cap() -> None:
    led = ledger(obs(0, -42, refill_in_s=10))
    assert led.projected(5) == -42
    assert led.projected(10) == -22
    assert led.projected(70) == -2
    assert led.projected(130) == 18
    # 63 steps take -42 past 1200: capped.
    assert led.projected(10 + 60 * 61) == -42 + 62 * 20
    assert led.projected(10 + 60 * 62) == 1200


def test_refills_are_projected_from_when_the_response_was_received() -> None:
    # Sent by Keepa at 0, received at 4: the refill is projected at 4 + 10, never earlier.
    led = ledger(obs(0, 100, refill_in_s=10, at=4))
    assert led.projected(13.9) == 100
    assert led.projected(14) == 120


# --- ordering -----------------------------------------------------------------------------


def test_an_older_observation_never_overwrites_a_newer_one() -> None:
    led = ledger(obs(2, 50))
    # A worker's settle that was sent before the broker's sync but arrives after it.
    assert not led.observe(obs(1, 500, source="settle", consumed=5, at=3), 3)
    assert led.projected(3) == 50
    assert not led.observe(obs(1.5, 40), 3)
    assert led.projected(3) == 50
    assert led.observe(obs(3, 45), 3)
    assert led.projected(3) == 45


def test_same_millisecond_keeps_the_lower_balance() -> None:
    led = ledger(obs(3, 45))
    assert led.observe(obs(3, 44, source="settle", consumed=1), 3)
    assert not led.observe(obs(3, 45), 3)
    assert led.projected(3) == 44


def test_a_bogus_future_settle_timestamp_is_ignored_and_cannot_freeze_the_ledger() -> None:
    led = ledger(obs(10, 100))
    # An envelope stamped an hour ahead of Keepa's clock: ignored.
    assert not led.observe(obs(3600, 5000, source="settle", at=11), 11)
    assert led.projected(11) == 100
    # Keepa's clock really went back: the broker's own newer /token answer is taken.
    led2 = ledger(obs(3600, 100, at=10))
    assert led2.observe(obs(11, 80, refill_in_s=20, sent_at=10.5, at=11), 11)
    assert led2.projected(11) == 80
    assert led2.observe(obs(12, 79, refill_in_s=19, source="settle", consumed=1), 12)


def test_from_envelope_carries_the_consumption() -> None:
    env = TokenEnvelope(
        timestamp_ms=5000, tokens_left=7, refill_in_ms=100, refill_rate=20, tokens_consumed=3
    )
    o = Observation.from_envelope(env, at=1.5, source="settle")
    assert (o.keepa_ts_ms, o.tokens_left, o.refill_in_ms, o.refill_rate) == (5000, 7, 100, 20)
    assert (o.at, o.source, o.tokens_consumed, o.sent_at) == (1.5, "settle", 3, None)


# --- in flight ----------------------------------------------------------------------------


def test_a_permit_granted_before_an_observation_counts_as_not_included_until_it_settles():
    led = ledger(obs(0, 500, refill_in_s=59))
    led.grant("a", 100, 1)
    assert led.in_flight() == 100
    assert led.available(1) == 400
    # Keepa ran "a" before this sync; the ledger cannot know that: still in flight.
    assert led.observe(obs(2, 400, refill_in_s=57), 2)
    assert led.available(2) == 300
    assert led.unaccounted == 0
    # Its settle is older than the sync: ignored as an observation, but "a" leaves in-flight.
    led.settle("a", obs(1.5, 400, refill_in_s=57.5, source="settle", consumed=100, at=3), 3)
    assert led.in_flight() == 0
    assert led.available(3) == 400
    assert led.tokens_spent == 100
    assert led.unaccounted == 0


def test_a_permit_run_after_the_observation_is_reconciled_by_its_settle() -> None:
    led = ledger(obs(0, 500, refill_in_s=59))
    led.grant("a", 100, 1)
    assert led.observe(obs(2, 500, refill_in_s=57), 2)  # "a" not run yet
    assert led.available(2) == 400
    led.settle("a", obs(2.5, 400, refill_in_s=56.5, source="settle", consumed=100, at=3), 3)
    assert led.available(3) == 400
    assert led.unaccounted == 0


# --- soft floor, recharge, deficit ---------------------------------------------------------


def test_soft_floor_enters_recharge_and_resumes_at_resume_at() -> None:
    led = ledger(obs(0, 100, refill_in_s=10), soft_floor=20, resume_at=60)
    assert led.can_grant(85, 0)
    led.grant("a", 85, 0)  # leaves 15 < 20: the grant still goes out ...
    assert led.in_flight() == 85
    assert led.recharge_mode  # ... and recharge starts
    assert not led.can_grant(1, 0)
    led.settle("a", obs(1, 15, refill_in_s=9, source="settle", consumed=85), 1)
    assert led.available(1) == 15
    assert not led.can_grant(1, 1)
    # 15 -> 35 at 10 -> 55 at 70 -> 75 at 130, the first >= 60.
    assert led.earliest_grant_at(1, 1) == 130
    assert not led.can_grant(1, 129.999)
    assert led.recharge_mode
    assert led.can_grant(1, 130)
    assert not led.recharge_mode


def test_a_grant_that_stays_at_the_soft_floor_does_not_start_recharge() -> None:
    led = ledger(obs(0, 100), soft_floor=20, resume_at=60)
    led.grant("a", 80, 0)
    assert led.available(0) == 20
    assert not led.recharge_mode
    assert led.can_grant(1, 0)


def test_resume_level_is_clamped_to_the_cap() -> None:
    led = ledger(obs(0, 30, refill_in_s=10, rate=1), soft_floor=20, resume_at=100)
    assert led.cap == 60
    assert led.resume_level == 60
    led.grant("a", 25, 0)
    assert led.recharge_mode
    led.settle("a", obs(1, 5, refill_in_s=9, rate=1, source="settle", consumed=25), 1)
    # 5 -> 60 takes 55 steps of 1; recharge must end there, not wait for 100.
    t = led.earliest_grant_at(1, 1)
    assert t == 10 + 54 * 60
    assert led.can_grant(1, t)


def test_max_deficit_lets_a_grant_take_available_below_zero_but_never_from_zero() -> None:
    led = ledger(obs(0, 30), max_deficit=50, soft_floor=0, resume_at=0)
    assert led.max_cost() == 1200 + 50
    assert led.can_grant(80, 0)  # 30 - 80 = -50
    assert not led.can_grant(81, 0)
    zero = ledger(obs(0, 0), max_deficit=50)
    assert not zero.can_grant(1, 0)  # Keepa refuses at <= 0: the fleet never causes a 429
    strict = ledger(obs(0, 30), soft_floor=0, resume_at=0)
    assert strict.can_grant(30, 0)
    assert not strict.can_grant(31, 0)


def test_no_grant_before_any_observation() -> None:
    led = Ledger()
    assert not led.has_observation
    assert led.max_cost() == 0
    assert not led.can_grant(1, 0)
    assert led.earliest_grant_at(1, 0) is None
    assert led.next_refill_at(0) is None


# --- plan changes -------------------------------------------------------------------------


def test_a_plan_change_replans_the_wait_at_once() -> None:
    led = ledger(obs(0, 100, refill_in_s=10, rate=20))
    assert led.earliest_grant_at(250, 0) == 10 + 7 * 60  # 8 steps of 20
    assert led.max_cost() == 1200
    assert led.observe(obs(1, 100, refill_in_s=9, rate=250, source="settle"), 1)
    assert led.earliest_grant_at(250, 1) == 10  # one step of 250
    assert led.max_cost() == 15000
    assert led.needs_sync
    assert led.observe(obs(2, 100, refill_in_s=8, rate=250), 2)
    assert not led.needs_sync
    assert led.observe(obs(3, 100, refill_in_s=7, rate=5), 3)
    assert led.max_cost() == 300
    assert led.earliest_grant_at(400, 3) is None
    assert led.earliest_grant_at(250, 3) == 10 + 29 * 60
    # An older observation with the old rate changes nothing.
    assert not led.observe(obs(2.5, 100, rate=250, source="settle"), 4)
    assert led.refill_rate == 5
    assert led.unaccounted == 0


# --- unaccounted consumption --------------------------------------------------------------


def test_tokens_vanishing_without_a_permit_are_unaccounted_once() -> None:
    led = ledger(obs(0, 500, refill_in_s=30))
    assert led.observe(obs(10, 430, refill_in_s=20), 10)  # someone spent 70
    assert led.unaccounted == 70
    # Across the refill at 30 (+20), 30 more vanish.
    assert led.observe(obs(40, 420, refill_in_s=50), 40)
    assert led.unaccounted == 100
    # The same balance seen again is not counted again, nor is an older observation.
    assert led.observe(obs(45, 420, refill_in_s=45), 45)
    assert not led.observe(obs(44, 300, refill_in_s=46), 46)
    assert led.unaccounted == 100


def test_refills_lost_to_the_cap_are_not_unaccounted() -> None:
    led = ledger(obs(0, 1200, refill_in_s=30))
    assert led.observe(obs(100, 1200, refill_in_s=50), 100)
    assert led.unaccounted == 0


def test_in_flight_permits_cause_no_false_unaccounted() -> None:
    led = ledger(obs(0, 500, refill_in_s=59))
    led.grant("a", 100, 1)
    assert led.observe(obs(2, 400, refill_in_s=57), 2)
    assert led.unaccounted == 0
    assert led.unaccounted_pending == 0
    led.settle("a", obs(1.5, 400, refill_in_s=57.5, source="settle", consumed=100, at=3), 3)
    assert led.unaccounted == 0


def test_a_permit_that_cost_more_than_granted_is_not_unaccounted() -> None:
    led = ledger(obs(0, 500, refill_in_s=59))
    led.grant("a", 10, 1)
    assert led.observe(obs(2, 475, refill_in_s=57), 2)  # Keepa charged 25 for "a"
    assert led.unaccounted == 0
    assert led.unaccounted_pending == 15
    led.settle("a", obs(1.5, 475, refill_in_s=57.5, source="settle", consumed=25, at=3), 3)
    assert led.unaccounted_pending == 0
    assert led.unaccounted == 0


def test_a_stranger_is_counted_once_in_flight_permits_have_settled() -> None:
    led = ledger(obs(0, 500, refill_in_s=59))
    led.grant("a", 100, 1)
    assert led.observe(obs(2, 350, refill_in_s=57), 2)  # "a" ran (100), a stranger took 50
    assert led.unaccounted == 0
    assert led.unaccounted_pending == 50
    led.settle("a", obs(1.5, 400, refill_in_s=57.5, source="settle", consumed=100, at=3), 3)
    assert led.unaccounted == 50
    assert led.unaccounted_pending == 0


def test_a_pending_gap_is_dropped_when_its_permit_ends_without_an_envelope() -> None:
    led = ledger(obs(0, 500, refill_in_s=59))
    led.grant("a", 10, 1)
    assert led.observe(obs(2, 475, refill_in_s=57), 2)
    assert led.unaccounted_pending == 15
    led.expire("a", 151)
    assert led.unaccounted_pending == 0
    assert led.unaccounted == 0


def test_a_settle_observation_explains_its_own_cost() -> None:
    led = ledger(obs(0, 500, refill_in_s=59))
    led.grant("a", 40, 1)
    led.settle("a", obs(2, 460, refill_in_s=57, source="settle", consumed=40), 2)
    assert led.unaccounted == 0
    led.grant("b", 40, 3)
    led.settle("b", obs(4, 400, refill_in_s=55, source="settle", consumed=40), 4)
    assert led.unaccounted == 20


def test_a_plan_change_is_not_unaccounted() -> None:
    led = ledger(obs(0, 500, rate=20))
    assert led.observe(obs(2, 100, rate=5), 2)
    assert led.unaccounted == 0


# --- expiry, unknown outcome, release -----------------------------------------------------


def test_an_expired_lease_is_assumed_spent_until_a_sync_sent_after_it() -> None:
    led = ledger(obs(0, 500, refill_in_s=30))
    led.grant("a", 100, 1)
    led.expire("a", 151)
    assert led.in_flight() == 0
    assert led.projected(151) == 560 - 100  # refills at 30, 90, 150
    assert led.needs_sync
    assert led.tokens_spent == 100
    assert led.assumed_spent == 100
    # A /token call sent before the expiry and answered after it proves nothing.
    assert led.observe(obs(150.5, 560, refill_in_s=59.5, sent_at=150.5, at=151.5), 151.5)
    assert led.projected(151.5) == 460
    assert led.needs_sync
    # One sent after it shows the truth: "a" never ran.
    assert led.observe(obs(152, 560, refill_in_s=58, sent_at=151.8, at=152.1), 152.1)
    assert led.assumed_spent == 0
    assert led.projected(152.1) == 560
    assert not led.needs_sync


def test_a_late_settle_of_an_expired_permit_replaces_the_assumption() -> None:
    led = ledger(obs(0, 500, refill_in_s=59))
    led.grant("a", 100, 1)
    led.expire("a", 151)
    assert led.tokens_spent == 100
    late = obs(100, 500 + 20 - 30, refill_in_s=19, source="settle", consumed=30, at=152)
    led.settle("a", late, 152)
    assert led.assumed_spent == 0
    assert led.tokens_spent == 30
    assert led.projected(152) == 490


def test_an_unknown_outcome_is_assumed_spent_and_asks_for_a_sync() -> None:
    led = ledger(obs(0, 500, refill_in_s=59))
    led.grant("a", 100, 1)
    led.settle("a", None, 5)
    assert led.in_flight() == 0
    assert led.available(5) == 400
    assert led.needs_sync
    assert led.tokens_spent == 100
    assert led.observe(obs(6, 400, refill_in_s=53, sent_at=5.5, at=6), 6)
    assert led.available(6) == 400
    assert not led.needs_sync
    assert led.unaccounted == 0


def test_release_gives_the_tokens_back() -> None:
    led = ledger(obs(0, 500, refill_in_s=59))
    led.grant("a", 100, 1)
    led.release("a", 2)
    assert led.available(2) == 500
    assert led.tokens_spent == 0
    assert not led.needs_sync


# --- planning -----------------------------------------------------------------------------


def test_earliest_grant_at_from_a_negative_balance_is_the_exact_refill_step() -> None:
    led = ledger(obs(0, -100, refill_in_s=5))
    t = led.earliest_grant_at(10, 0)
    assert t == 5 + 5 * 60  # -100 + 6 x 20 = 20 >= 10
    assert not led.can_grant(10, t - 0.001)
    assert led.can_grant(10, t)
    assert led.earliest_grant_at(10, t) == t


def test_earliest_grant_at_with_a_deficit() -> None:
    led = ledger(obs(0, -100, refill_in_s=10), max_deficit=50)
    assert led.earliest_grant_at(60, 0) == 10 + 5 * 60  # needs 10 (and > 0)
    assert led.earliest_grant_at(20, 0) == 10 + 5 * 60  # needs > 0: 20 after 6 steps
    assert led.earliest_grant_at(200, 0) == 10 + 12 * 60  # needs 150
    assert led.earliest_grant_at(1250, 0) is not None
    assert led.earliest_grant_at(1251, 0) is None


def test_earliest_grant_at_the_cap() -> None:
    led = ledger(obs(0, 1190, refill_in_s=5))
    assert led.max_cost() == 1200
    assert led.earliest_grant_at(1200, 0) == 5
    assert led.earliest_grant_at(1201, 0) is None
    # Up to 10 tokens spent now would be refilled by the capped step anyway.
    assert led.earliest_grant_at(1200, 0, extra_spend=10) == 5
    assert led.earliest_grant_at(1200, 0, extra_spend=11) == 65


def test_earliest_grant_at_with_extra_spend_counts_steps() -> None:
    led = ledger(obs(0, 100, refill_in_s=5))
    assert led.earliest_grant_at(250, 0) == 5 + 7 * 60  # 8 steps: 260
    assert led.earliest_grant_at(250, 0, extra_spend=10) == 5 + 7 * 60
    assert led.earliest_grant_at(250, 0, extra_spend=11) == 5 + 8 * 60


def test_extra_spend_that_starts_recharge_is_planned_with_it() -> None:
    led = ledger(obs(0, 30, refill_in_s=5), soft_floor=20, resume_at=60)
    assert led.earliest_grant_at(10, 0) == 0
    # Spending 15 now leaves 15 < 20: recharge until 60, i.e. 3 steps.
    assert led.earliest_grant_at(10, 0, extra_spend=15) == 5 + 2 * 60


def test_planned_instants_are_exact_on_short_periods() -> None:
    led = Ledger(refill_period_s=0.05)
    led.observe(obs(0.1, 3, refill_in_s=0.03, rate=2), 0.1)
    for cost in range(4, 40, 3):
        t = led.earliest_grant_at(cost, 0.1)
        assert t is not None and t > 0.1
        assert led.can_grant(cost, t), cost
        # The instant is a projected refill step: just before it, not yet.
        assert not Ledger.can_grant(led, cost, t - 1e-9)


def test_snapshot_has_the_status_fields() -> None:
    led = ledger(obs(0, 500, refill_in_s=30))
    led.grant("a", 100, 10)
    snap = led.snapshot(10)
    for key in (
        "projected",
        "available",
        "in_flight",
        "refill_rate",
        "refill_in_ms",
        "cap",
        "recharge_mode",
        "resume_at",
        "soft_floor",
        "max_deficit",
        "unaccounted",
        "tokens_spent",
        "observation_age_s",
        "needs_sync",
        "max_cost",
    ):
        assert key in snap, key
    assert snap["projected"] == 500
    assert snap["available"] == 400
    assert snap["refill_in_ms"] == 20_000
    assert snap["observation_age_s"] == 10


@pytest.mark.parametrize("period", [0.0, -1.0, float("nan")])
def test_bad_refill_period_is_refused(period: float) -> None:
    with pytest.raises(ValueError):
        Ledger(refill_period_s=period)
