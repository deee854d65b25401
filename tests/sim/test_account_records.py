"""The simulator's account in full, on a fake clock: the state it reports after calls,
statuses and external spending; unpaid keys; account numbering; refill timing to the
millisecond; what a zero-cost call does. Written against the mutants that survived the
first ``make mutate`` (docs/MUTATION.md)."""

from __future__ import annotations

from sim.account import Account, Accounts


def test_the_state_of_an_account_in_full() -> None:
    acct = Account(3, refill_rate=5, refill_period_s=2.0, tokens=40, now=100.0)
    acct.count_call("token")
    acct.count_call("product")
    acct.count_call("product")
    acct.count_call("deal")
    assert acct.try_charge(100.5, 30).accepted
    acct.record_status(200)
    acct.record_status(429)
    acct.record_status(429)
    assert acct.consume_external(101.0, 4).accepted
    assert acct.state(103.0) == {
        "account": "account#3",
        "paid": True,
        "tokens_left": 40 - 30 - 4 + 5,  # one refill step, at 102
        "tokens_consumed": 34,
        "external_consumed": 4,
        "tokens_lost_to_cap": 0,
        "requests": 4,
        "status_429": 2,
        "statuses": {"200": 1, "429": 2},
        "refill_rate": 5,
        "refill_period_s": 2.0,
        "refill_in_ms": 1000,
        "refill_steps": 1,
        "cap": 300,
        "min_tokens_left": 10,
        "token_calls": 1,
        "product_calls": 2,
        "deal_calls": 1,
        "refill_to_first_request_ms": [],
        "created_at": 100.0,
        "last_charged_at": 100.5,  # the API request; external spending is not a request
    }


def test_a_fresh_account_reports_zeros() -> None:
    s = Account(1, refill_rate=5, refill_period_s=2.0, tokens=None, now=0.0).state(0.5)
    assert s["status_429"] == 0 and s["statuses"] == {}
    assert (s["token_calls"], s["product_calls"], s["deal_calls"]) == (0, 0, 0)
    assert s["tokens_left"] == 300 and s["min_tokens_left"] == 300 and s["refill_in_ms"] == 1500
    assert s["last_charged_at"] is None


def test_an_unpaid_account_has_no_tokens_and_no_refills() -> None:
    acct = Account(1, refill_rate=5, refill_period_s=2.0, tokens=40, now=0.0, paid=False)
    assert acct.state(0.5)["tokens_left"] == 0  # before any refill step, too
    s = acct.state(100.0)
    assert (s["paid"], s["tokens_left"], s["refill_rate"], s["cap"]) == (False, 0, 0, 0)
    assert not acct.try_charge(100.0, 1).accepted
    assert Account(1, refill_rate=5, refill_period_s=2.0, tokens=40, now=0.0).paid is True


def test_accounts_are_numbered_in_order_of_first_use_and_unpaid_by_prefix() -> None:
    accounts = Accounts(refill_rate=5, refill_period_s=2.0, tokens=None)
    a = accounts.get("key-aaaaaaaa", 0.0)
    b = accounts.get("unpaid-bbbbbbbb", 1.0)
    assert accounts.get("key-aaaaaaaa", 2.0) is a
    c = accounts.get("key-cccccccc", 3.0)
    assert [x.label for x in (a, b, c)] == ["account#1", "account#2", "account#3"]
    assert (a.paid, b.paid, c.paid) == (True, False, True)
    assert (a.refill_rate, a.refill_period_s, a.balance, a.created_at) == (5, 2.0, 300, 0.0)
    assert c.created_at == 3.0
    assert accounts.all() == [a, b, c]


def test_refill_in_is_rounded_up_and_never_zero() -> None:
    acct = Account(1, refill_rate=5, refill_period_s=2.0, tokens=0, now=0.0)
    assert acct.state(1.9996)["refill_in_ms"] == 1  # 0.4 ms: rounded up
    assert acct.state(2.0)["refill_in_ms"] == 2000
    assert acct.state(1.9984)["refill_in_ms"] == 2


def test_refills_apply_once_per_step_and_not_again() -> None:
    acct = Account(1, refill_rate=5, refill_period_s=2.0, tokens=0, now=0.0)
    assert acct.state(4.0)["tokens_left"] == 10
    assert acct.state(4.5)["tokens_left"] == 10
    assert acct.state(5.999)["refill_steps"] == 2
    assert acct.state(6.0)["tokens_left"] == 15


def test_consumption_adds_up_and_the_refused_call_changes_nothing() -> None:
    acct = Account(1, refill_rate=5, refill_period_s=100.0, tokens=10, now=0.0)
    first = acct.try_charge(1.0, 4)
    second = acct.try_charge(1.0, 7)
    assert (first.accepted, first.tokens_left) == (True, 6)
    assert (second.accepted, second.tokens_left) == (True, -1)
    refused = acct.try_charge(1.0, 1)
    assert (refused.accepted, refused.tokens_left) == (False, -1)
    assert acct.tokens_consumed == 11 and acct.min_tokens_left == -1
    ext = acct.consume_external(1.0, 3)
    assert (ext.accepted, ext.tokens_left) == (False, -1)
    assert acct.external_consumed == 0


def test_external_spending_adds_up() -> None:
    acct = Account(1, refill_rate=5, refill_period_s=100.0, tokens=10, now=0.0)
    assert acct.consume_external(1.0, 2).tokens_left == 8
    assert acct.consume_external(1.0, 3).tokens_left == 5
    assert acct.external_consumed == 5 and acct.tokens_consumed == 5
    assert acct.min_tokens_left == 10  # API requests only


def test_refill_to_first_request_is_measured_to_a_tenth_of_a_millisecond() -> None:
    acct = Account(1, refill_rate=5, refill_period_s=2.0, tokens=100, now=10.0)
    assert acct.try_charge(11.0, 1).accepted  # before the first step: nothing measured
    assert acct.try_charge(12.01234, 1).accepted
    assert acct.try_charge(12.5, 1).accepted  # the same step again: not measured
    assert acct.try_charge(14.2, 0).accepted  # a free call is not the first request
    assert acct.try_charge(14.3, 1).accepted
    assert list(acct.refill_to_first_request_ms) == [12.3, 300.0]


def test_a_free_call_is_served_while_the_balance_is_positive_only() -> None:
    acct = Account(1, refill_rate=5, refill_period_s=100.0, tokens=1, now=0.0)
    assert acct.try_charge(1.0, 0) == acct.try_charge(1.0, 0)
    assert acct.try_charge(1.0, 0).tokens_left == 1
    assert acct.tokens_consumed == 0
    acct.set_tokens(1.0, 0)
    assert not acct.try_charge(1.0, 0).accepted


def test_the_envelope_of_a_response() -> None:
    acct = Account(1, refill_rate=5, refill_period_s=2.0, tokens=50, now=0.0)
    assert acct.envelope(3.25, consumed=7, processing_ms=12) == {
        "timestamp": 3250,
        "tokensLeft": 55,
        "refillIn": 750,
        "refillRate": 5,
        "tokensConsumed": 7,
        "processingTimeInMs": 12,
        "tokenFlowReduction": 0.0,
    }


def test_a_balance_set_above_the_cap_stays_until_the_next_step() -> None:
    acct = Account(1, refill_rate=5, refill_period_s=2.0, tokens=0, now=0.0)
    acct.set_tokens(0.5, 1000)  # above the cap of 300, by hand
    assert acct.state(1.0)["tokens_left"] == 1000
    assert acct.state(2.0)["tokens_left"] == 300  # a refill step caps it


def test_refill_to_first_request_keeps_the_last_ten_thousand_steps() -> None:
    acct = Account(1, refill_rate=5, refill_period_s=1.0, tokens=None, now=0.0)
    for step in range(1, 10_003):
        assert acct.try_charge(step + 0.001, 1).accepted
    kept = acct.refill_to_first_request_ms
    assert len(kept) == 10_000
