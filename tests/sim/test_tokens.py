"""Token accounts over HTTP: refill steps, cap, acceptance rule, 429, the envelope, admin."""

from __future__ import annotations

import time
from typing import Any

from support import wait_until

KEY = "test-key-0001"


def envelope(resp: Any) -> dict[str, Any]:
    body = resp.json()
    return {k: body[k] for k in ("timestamp", "tokensLeft", "refillIn", "refillRate")}


def test_token_is_free_and_carries_the_envelope(sim):
    before = time.time() * 1000
    bodies = [sim.token().json() for _ in range(5)]
    after = time.time() * 1000
    for body in bodies:
        for field in sim.ENVELOPE_FIELDS:
            assert field in body, field
        assert body["tokensLeft"] == 1200  # full: 60 x 20
        assert body["tokensConsumed"] == 0
        assert body["refillRate"] == 20
        assert 0 < body["refillIn"] <= 3600 * 1000
        # Real epoch milliseconds (the simulator runs on this machine's clock).
        assert before - 1 <= body["timestamp"] <= after + 1
    state = sim.state()
    assert state["token_calls"] == 5
    assert state["tokens_consumed"] == 0
    assert state["requests"] == 5


def test_refill_adds_the_rate_once_per_period_at_the_announced_instant(make_sim):
    rate, period_ms = 7, 200
    sim = make_sim(refill_rate=rate, refill_period_s=period_ms / 1000, tokens=0)
    first = envelope(sim.token())
    assert first["tokensLeft"] == 0
    assert 0 < first["refillIn"] <= period_ms + 1
    seen: list[dict[str, Any]] = []

    def changed() -> bool:
        env = envelope(sim.token())
        seen.append(env)
        return env["tokensLeft"] != first["tokensLeft"]

    wait_until(changed, 10, interval=0.01, message="a refill step")
    second = seen[-1]
    gained = second["tokensLeft"] - first["tokensLeft"]
    # One step adds exactly the rate: a whole number of steps, never a fraction.
    assert gained > 0 and gained % rate == 0, gained
    steps = gained // rate
    step_at = first["timestamp"] + first["refillIn"]
    # Not before the instant the first envelope announced...
    assert second["timestamp"] >= step_at - 2
    # ...and exactly as many steps as fell between the two answers (ms rounding: a step
    # within 3 ms of the answer may or may not be in it).
    elapsed = second["timestamp"] - step_at
    fewest, most = (elapsed - 3) // period_ms + 1, (elapsed + 3) // period_ms + 1
    assert fewest <= steps <= most, (steps, elapsed)
    # ...and not late: no answer sent after the instant still showed the old balance.
    assert all(e["timestamp"] <= step_at + 2 for e in seen[:-1])


def test_refill_steps_accumulate_with_a_short_period(make_sim):
    rate = 5
    sim = make_sim(refill_rate=rate, refill_period_s=0.05, tokens=0)
    sim.token()
    state = wait_until(
        lambda: s if (s := sim.state())["refill_steps"] >= 4 else None, 10, message="4 steps"
    )
    assert state["tokens_left"] == min(rate * state["refill_steps"], state["cap"])


def test_balance_is_capped_at_60_times_the_rate(make_sim):
    sim = make_sim(refill_rate=3, refill_period_s=0.05, tokens=170)
    assert sim.token().json()["tokensLeft"] == 170
    state = wait_until(
        lambda: s if (s := sim.state())["refill_steps"] >= 6 else None, 10, message="6 steps"
    )
    assert state["cap"] == 180
    assert state["tokens_left"] == 180  # 170 + 6 x 3 = 188 without the cap
    # What the cap dropped is counted: every token refilled above 180 (nothing was spent).
    assert state["tokens_lost_to_cap"] == 170 + 3 * state["refill_steps"] - 180
    # A balance set above the cap (by hand) falls to the cap at the next step.
    sim.admin("tokens", key=KEY, tokens=500).raise_for_status()
    steps = sim.state()["refill_steps"]
    state = wait_until(
        lambda: s if (s := sim.state())["refill_steps"] > steps else None, 10, message="a step"
    )
    assert state["tokens_left"] == 180


def test_full_account_starts_at_the_cap_and_stays_there(make_sim):
    sim = make_sim(refill_rate=4, refill_period_s=0.05)
    assert sim.token().json()["tokensLeft"] == 240
    wait_until(lambda: sim.state()["refill_steps"] >= 3, 10, message="3 steps")
    assert sim.token().json()["tokensLeft"] == 240
    state = sim.state()
    assert state["tokens_lost_to_cap"] == 4 * state["refill_steps"]  # each step found it full


def test_a_request_runs_on_a_positive_balance_and_may_drive_it_negative(make_sim):
    sim = make_sim(tokens=3)
    p = sim.find(sim.with_offers(18))
    resp = sim.product([p.asin], offers=20)  # 2 pages of offers: 12 tokens
    assert resp.status_code == 200
    body = resp.json()
    assert body["tokensConsumed"] == 12
    assert body["tokensLeft"] == -9
    assert len(body["products"]) == 1
    state = sim.state()
    assert state["min_tokens_left"] == -9
    assert state["tokens_left"] == -9
    # Now the balance is <= 0: refused, nothing charged, the envelope still there.
    again = sim.product([p.asin])
    assert again.status_code == 429
    assert again.json()["tokensLeft"] == -9
    assert again.json()["tokensConsumed"] == 0
    assert sim.state()["tokens_consumed"] == 12


def test_one_token_is_enough_for_any_cost(make_sim):
    sim = make_sim(tokens=1)
    p = sim.find(sim.with_offers(60))
    body = sim.product([p.asin], offers=100).json()
    assert body["tokensConsumed"] == 36
    assert body["tokensLeft"] == -35


def test_429_at_zero_with_the_full_envelope(make_sim):
    sim = make_sim(tokens=0)
    asin = sim.catalog.asin(0)
    for resp in (sim.product([asin]), sim.deal()):
        assert resp.status_code == 429
        body = resp.json()
        for field in sim.ENVELOPE_FIELDS:
            assert field in body, field
        assert body["tokensLeft"] == 0
        assert body["tokensConsumed"] == 0
        # Recorded (tests/fixtures/keepa-real/error429-agentarbitrage-1.json): a 429 body is
        # the envelope alone.
        assert set(body) == set(sim.ENVELOPE_FIELDS), body
    assert sim.token().status_code == 200  # /token is never refused
    state = sim.state()
    assert state["status_429"] == 2
    assert state["tokens_consumed"] == 0


def test_a_negative_balance_is_refused_until_refills_make_it_positive(make_sim):
    sim = make_sim(refill_rate=10, refill_period_s=0.05, tokens=-25)
    asin = sim.catalog.asin(0)
    assert sim.product([asin]).status_code == 429
    resp = wait_until(
        lambda: r if (r := sim.product([asin])).status_code == 200 else None,
        10,
        message="a refill to a positive balance",
    )
    assert resp.json()["tokensConsumed"] == 1
    state = sim.state()
    assert state["tokens_consumed"] == 1
    assert state["status_429"] >= 1


def test_refill_to_first_request_is_measured_per_step(make_sim):
    period_ms = 300
    sim = make_sim(refill_rate=5, refill_period_s=period_ms / 1000)
    asin = sim.catalog.asin(0)
    sim.token()
    wait_until(lambda: sim.state()["refill_steps"] >= 1, 10, message="a refill step")
    sim.token()  # free: not a token-costing request
    assert sim.state()["refill_to_first_request_ms"] == []
    sim.product([asin])
    sim.product([asin])
    state = sim.state()
    entries = state["refill_to_first_request_ms"]
    assert 1 <= len(entries) <= state["refill_steps"]
    assert all(0 <= ms <= period_ms for ms in entries)


def test_plan_change_takes_effect_at_once(sim):
    assert sim.token().json()["refillRate"] == 20
    resp = sim.admin("plan", key=KEY, refill_rate=7)
    assert resp.status_code == 200
    assert sim.token().json()["refillRate"] == 7
    state = sim.state()
    assert state["refill_rate"] == 7
    assert state["cap"] == 420
    assert sim.admin("plan", key=KEY, refill_rate=0).status_code == 400
    assert sim.admin("plan", key=KEY, refill_rate="x").status_code == 400


def test_another_program_consuming_tokens(sim):
    resp = sim.admin("consume", key=KEY, tokens=1250)
    assert resp.json() == {"accepted": True, "tokens_left": -50}
    state = sim.state()
    assert state["tokens_consumed"] == 1250
    assert state["external_consumed"] == 1250
    assert state["min_tokens_left"] == 1200  # watches API requests only
    # The acceptance rule holds for it too.
    assert sim.admin("consume", key=KEY, tokens=5).json() == {
        "accepted": False,
        "tokens_left": -50,
    }
    assert sim.product([sim.catalog.asin(0)]).status_code == 429


def test_set_balance(sim):
    assert sim.admin("tokens", key=KEY, tokens=-5).json()["tokens_left"] == -5
    assert sim.token().json()["tokensLeft"] == -5
    assert sim.product([sim.catalog.asin(0)]).status_code == 429
    assert sim.admin("tokens", key=KEY, tokens=30).json()["tokens_left"] == 30
    assert sim.product([sim.catalog.asin(0)]).json()["tokensLeft"] == 29


def test_accounts_are_per_key(make_sim):
    sim = make_sim(tokens=10)
    other = "another-key-2"
    sim.product([sim.catalog.asin(0)])
    assert sim.token().json()["tokensLeft"] == 9
    assert sim.token(other).json()["tokensLeft"] == 10
    assert sim.state(other)["requests"] == 1
