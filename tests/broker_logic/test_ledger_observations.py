"""Which observations the ledger takes, at the edge of each rule: malformed refill figures,
the same millisecond, Keepa's clock going back, settle envelopes ahead of Keepa's clock, the
syncs that clear assumptions; refill steps at exact instants; the bad settings refused with
their names. Written against the mutants that survived ``make mutate`` (docs/MUTATION.md)."""

from __future__ import annotations

import pytest
from broker_logic.fakes import obs

from broker.ledger import MAX_CLOCK_SKEW_MS, Ledger, Observation
from common.keepa import TokenEnvelope


def ledger(first: Observation, **kwargs: int | float) -> Ledger:
    led = Ledger(**kwargs)  # type: ignore[arg-type]
    assert led.observe(first, first.at)
    return led


def raw(ts_ms: int, left: int, refill_in_ms: int, rate: int = 20, **kw: object) -> Observation:
    return Observation(ts_ms, left, refill_in_ms, rate, at=ts_ms / 1000, **kw)  # type: ignore[arg-type]


# --- settings -------------------------------------------------------------------------------


def test_bad_settings_are_refused_naming_them() -> None:
    with pytest.raises(ValueError, match=r"^refill_period_s must be a positive number of seconds$"):
        Ledger(refill_period_s=0)
    with pytest.raises(ValueError, match=r"^max_deficit must be >= 0$"):
        Ledger(max_deficit=-1)
    Ledger(max_deficit=0)


def test_a_new_ledger_is_not_recharging_and_needs_no_sync() -> None:
    led = Ledger()
    assert led.recharge_mode is False and led.needs_sync is False
    assert led.snapshot(0)["recharge_mode"] is False


def test_recharge_ends_as_false_not_merely_falsy() -> None:
    led = ledger(obs(0, 100, refill_in_s=30), soft_floor=20, resume_at=60)
    led.grant("a", 90, 1)
    assert led.recharge_mode is True
    led.release("a", 2)
    assert led.recharge_mode is False and led.snapshot(2)["recharge_mode"] is False


# --- malformed figures ---------------------------------------------------------------------


def test_refill_figures_are_taken_up_to_their_bounds_and_refused_past_them() -> None:
    led = ledger(raw(1000, 100, 0))  # refillIn 0: the step is now
    assert led.observe(raw(2000, 100, 10**9), 2)
    assert not led.observe(raw(3000, 100, 10**9 + 1), 3)
    assert not led.observe(raw(3001, 100, -1), 3)
    assert not led.observe(raw(3002, 100, 500, rate=-1), 3)
    assert led.observe(raw(3003, 100, 500, rate=0), 3)  # a plan with no refills is valid
    snap = led.snapshot(3)
    assert (snap["observations_accepted"], snap["observations_ignored"]) == (3, 3)


def test_a_refill_due_now_is_projected_at_once() -> None:
    led = ledger(raw(10_000, 100, 0))
    assert led.projected(10.0) == 120  # refillIn 0: the step at the receiving instant
    led2 = ledger(raw(10_000, 100, 1))
    assert led2.projected(10.0) == 100 and led2.projected(10.001) == 120


# --- which of two observations is the newer ----------------------------------------------------


def test_the_same_millisecond_keeps_the_lower_balance_and_counts_the_other_ignored() -> None:
    led = ledger(raw(5000, 100, 1000))
    assert led.observe(raw(5000, 90, 1000), 5)  # lower: a later response of the same ms
    assert not led.observe(raw(5000, 90, 1000), 5)  # the same balance: nothing new
    assert not led.observe(raw(5000, 95, 1000), 5)
    assert led.observation is not None and led.observation.tokens_left == 90
    assert led.snapshot(5)["observations_ignored"] == 2
    # Not compared with the first: both responses of one millisecond show one state.
    assert led.unaccounted == 0


def test_keepa_clock_going_back_is_taken_from_a_sync_sent_after_the_newest() -> None:
    led = ledger(raw(100_000, 100, 1000))
    back = MAX_CLOCK_SKEW_MS + 1
    # Sent after the newest was received (at 100.0): Keepa's clock did go back.
    taken = Observation(100_000 - back, 80, 1000, 20, at=101.0, sent_at=100.5)
    assert led.observe(taken, 101.0)
    assert led.observation is taken and led.unaccounted == 0  # a clock jump explains nothing
    # The next settle envelope on the new clock is not "ahead of Keepa's clock".
    after = Observation(100_000 - back + 2000, 70, 1000, 20, at=103.0, source="settle")
    assert led.observe(after, 103.0)


def test_keepa_clock_going_back_by_the_skew_or_less_is_an_older_observation() -> None:
    led = ledger(raw(100_000, 100, 1000))
    old = Observation(100_000 - MAX_CLOCK_SKEW_MS, 80, 1000, 20, at=101.0, sent_at=100.5)
    assert not led.observe(old, 101.0)
    assert led.observation is not None and led.observation.tokens_left == 100


def test_a_back_jump_from_a_sync_sent_before_the_newest_arrived_is_ignored() -> None:
    led = ledger(raw(100_000, 100, 1000))
    back = MAX_CLOCK_SKEW_MS + 1
    at_the_newest = Observation(100_000 - back, 80, 1000, 20, at=101.0, sent_at=100.0)
    assert not led.observe(at_the_newest, 101.0)
    no_sent_at = Observation(100_000 - back, 80, 1000, 20, at=100.0)  # sent = received = 100
    assert not led.observe(no_sent_at, 100.0)
    sent_later = Observation(100_000 - back, 80, 1000, 20, at=100.2)  # sent = received > 100
    assert led.observe(sent_later, 100.2)


def test_a_settle_envelope_ahead_of_keepas_clock_is_ignored_at_the_skew_edge() -> None:
    led = ledger(raw(10_000, 500, 30_000))  # Keepa's clock = ours (ms) here
    edge = Observation(12_000 + MAX_CLOCK_SKEW_MS, 490, 1000, 20, at=12.0, source="settle")
    assert led.observe(edge, 12.0)  # exactly the allowed skew ahead
    led2 = ledger(raw(10_000, 500, 30_000))
    ahead = Observation(12_001 + MAX_CLOCK_SKEW_MS, 490, 1000, 20, at=12.0, source="settle")
    assert not led2.observe(ahead, 12.0)
    assert led2.snapshot(12)["observations_ignored"] == 1


def test_keepas_clock_offset_is_a_lower_bound_kept_from_the_earliest_answers() -> None:
    # Received 2 s after Keepa stamped it: the offset bound stays at the tighter (-0) one.
    led = ledger(raw(10_000, 500, 30_000))
    assert led.observe(Observation(11_000, 500, 29_000, 20, at=13.0), 13.0)
    # A settle stamped at Keepa 13,000 + skew, received at 13: allowed against offset 0.
    ok = Observation(13_000 + MAX_CLOCK_SKEW_MS, 490, 1000, 20, at=13.0, source="settle")
    assert led.observe(ok, 13.0)


def test_the_offset_follows_a_sync_arriving_later_than_keepa_said() -> None:
    # First answer: Keepa 10 s = ours 10 s. Then a sync stamped well after ours: Keepa runs
    # ahead by 5 s, and settle envelopes up to 5 s + skew ahead of our clock are valid.
    led = ledger(raw(10_000, 500, 30_000))
    assert led.observe(Observation(16_000, 500, 24_000, 20, at=11.0, sent_at=10.9), 11.0)
    ahead = Observation(12_000 + 5000 + MAX_CLOCK_SKEW_MS, 490, 1000, 20, at=12.0,
                        source="settle")  # fmt: skip
    assert led.observe(ahead, 12.0)


def test_a_plan_change_is_counted_once_each() -> None:
    led = ledger(obs(0, 500, rate=20))
    assert led.observe(obs(1, 500, rate=5), 1)
    assert led.observe(obs(2, 500, rate=50), 2)
    assert led.snapshot(2)["plan_changes"] == 2
    assert led.observe(obs(3, 500, rate=50, source="settle"), 3)
    assert led.snapshot(3)["plan_changes"] == 2


# --- assumptions cleared by syncs ------------------------------------------------------------


def test_a_sync_sent_at_the_instant_of_an_assumption_clears_it() -> None:
    led = ledger(obs(0, 500, refill_in_s=59))
    led.grant("a", 10, 1)
    led.expire("a", 5)
    assert led.observe(obs(6, 490, refill_in_s=53, sent_at=5, at=6), 6)
    assert led.assumed_spent == 0 and not led.needs_sync


def test_a_sync_without_a_send_time_clears_only_assumptions_before_it_arrived() -> None:
    led = ledger(obs(0, 500, refill_in_s=59))
    led.grant("a", 10, 1)
    led.grant("b", 10, 1)
    led.expire("a", 5)
    led.expire("b", 6)
    assert led.observe(obs(6, 480, refill_in_s=53, at=6), 6)
    assert led.assumed_spent == 10 and led.needs_sync  # "b" was assumed at 6: not before


def test_an_unknown_outcome_is_assumed_under_its_permit_and_a_late_envelope_replaces_it():
    led = ledger(obs(0, 500, refill_in_s=59))
    led.grant("a", 10, 1)
    led.settle("a", None, 2)
    assert led.assumed_spent == 10
    led.settle("a", obs(1.5, 496, refill_in_s=57.5, source="settle", consumed=4, at=3), 3)
    assert led.assumed_spent == 0 and led.tokens_spent == 4


def test_a_permit_already_known_cannot_be_granted_again() -> None:
    led = ledger(obs(0, 500, refill_in_s=59))
    led.grant("a", 10, 1)
    with pytest.raises(ValueError, match=r"^permit a is already known to the ledger$"):
        led.grant("a", 10, 1)
    led.expire("a", 2)
    with pytest.raises(ValueError, match="already known"):
        led.grant("a", 10, 3)


# --- refill steps at exact instants ------------------------------------------------------------


@pytest.mark.parametrize("period", [0.1, 0.3, 1.0, 7.0, 60.0])
def test_every_refill_step_lands_at_its_instant_not_a_hair_before(period: float) -> None:
    led = ledger(obs(0, -10_000, refill_in_s=0.25, rate=1), refill_period_s=period)
    first = led.next_refill_at(0)
    assert first == 0.25
    at = first
    for j in range(1, 400):
        assert led.projected(at) == -10_000 + j, (j, at)
        before = at - min(period / 10, 1e-6)
        assert led.projected(before) == -10_000 + j - 1, (j, before)
        nxt = led.next_refill_at(at)
        assert nxt is not None and nxt > at
        at = nxt
    assert led.projected(0.2) == -10_000


def test_a_balance_of_zero_refills_at_a_rate_of_zero_stays() -> None:
    led = ledger(obs(0, 5, refill_in_s=10, rate=0))
    assert led.projected(1000) == 5
    assert led.observe(obs(100, 3, refill_in_s=10, rate=0), 100)  # 2 gone, no refill explains
    assert led.unaccounted == 2


# --- the status view at the edge -----------------------------------------------------------------


def test_refill_in_ms_rounds_to_zero_just_before_the_step() -> None:
    led = ledger(obs(0, 100, refill_in_s=30))
    assert led.snapshot(29.9996)["refill_in_ms"] == 0
    assert led.snapshot(29.999)["refill_in_ms"] == 1


def test_from_envelope_carries_the_send_time_of_a_sync() -> None:
    env = TokenEnvelope(
        timestamp_ms=5000, tokens_left=7, refill_in_ms=100, refill_rate=20, tokens_consumed=0
    )
    o = Observation.from_envelope(env, at=1.5, source="sync", sent_at=1.25)
    assert (o.sent_at, o.source, o.at) == (1.25, "sync", 1.5)


# --- planning against a stale recharge flag -----------------------------------------------------


def test_recharge_that_time_has_ended_does_not_hold_back_a_plan_with_extra_spend() -> None:
    led = ledger(obs(0, 25, refill_in_s=30), soft_floor=20, resume_at=55)
    led.grant("a", 10, 1)  # 15 available: recharge
    assert led.recharge_mode
    # At 90 two refills make 55 = the resume level; nothing has refreshed the flag yet.
    assert led.earliest_grant_at(1, 90, extra_spend=5) == 90


def test_one_token_of_extra_spend_into_the_soft_floor_is_recharge() -> None:
    led = ledger(obs(0, 20, refill_in_s=30), soft_floor=20, resume_at=60)
    assert led.earliest_grant_at(1, 1) == 1
    # 20 - 1 = 19 < 20: recharge, waiting for 60: three refills (30, 90, 150).
    assert led.earliest_grant_at(1, 1, extra_spend=1) == 150


# --- the last survivors of _observe --------------------------------------------------------------


def test_a_first_observation_may_be_a_settle_envelope() -> None:
    led = Ledger()
    assert led.observe(Observation(5000, 100, 1000, 20, at=5.0, source="settle"), 5.0)
    assert led.observation is not None and led.observation.tokens_left == 100


def test_after_keepas_clock_went_back_envelopes_are_judged_by_the_new_clock() -> None:
    led = ledger(raw(100_000, 100, 1000))
    back = MAX_CLOCK_SKEW_MS + 10_000
    assert led.observe(Observation(100_000 - back, 80, 1000, 20, at=101.0, sent_at=100.5), 101.0)
    # Ahead of the new clock by more than the skew (but not of the old one): ignored.
    stamp = 100_000 - back + 1000 + MAX_CLOCK_SKEW_MS + 5000
    assert not led.observe(Observation(stamp, 70, 1000, 20, at=101.0, source="settle"), 101.0)


def test_each_ignored_observation_is_counted() -> None:
    led = ledger(raw(100_000, 100, 1000))
    for i in range(2):
        assert not led.observe(raw(50_000 + i, 100, 1000), 101)  # older
        assert not led.observe(raw(100_001 + i, 100, -1), 101)  # malformed
        ahead = Observation(300_000 + i, 100, 1000, 20, at=101.0, source="settle")
        assert not led.observe(ahead, 101)  # ahead of Keepa's clock
    assert led.snapshot(101)["observations_ignored"] == 6


def test_an_observation_that_ends_recharge_refreshes_at_its_instant() -> None:
    led = ledger(obs(0, 100, refill_in_s=30), soft_floor=20, resume_at=60)
    led.grant("a", 90, 1)
    assert led.recharge_mode
    assert led.observe(obs(2, 500, refill_in_s=28), 2)
    assert led.recharge_mode is False
