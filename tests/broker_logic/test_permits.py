"""The permit book on a fake clock: order and no starvation, retries, deadlines, sizes,
leases, settles, timers, bounded memory."""

from __future__ import annotations

import pytest
from broker_logic.fakes import KeepaAccount, obs

from broker import permits as permits_mod
from broker import states
from broker.ledger import Ledger, Observation
from broker.permits import Decision, PermitBook


def book_with(first: Observation | None, **ledger_kwargs: int | float) -> PermitBook:
    led = Ledger(**ledger_kwargs)  # type: ignore[arg-type]
    if first is not None:
        assert led.observe(first, first.at)
    return PermitBook(led, lease_ttl_s=150.0, id_prefix="t")


def grants(decisions: list[Decision]) -> list[Decision]:
    return [d for d in decisions if d.kind == "grant"]


# --- order, reservation, no starvation ----------------------------------------------------


def test_a_large_request_is_not_starved_by_a_stream_of_small_ones() -> None:
    """A 250 waits for 8 refill steps; 5-token requests arrive every second. Small ones go
    ahead only while they cannot delay it (the 10 spare tokens of its 8th step), and it is
    granted at the very step planned when it arrived."""
    acct = KeepaAccount(rate=20, period_ms=60_000, balance=100, next_refill_ms=5_000)
    led = Ledger(soft_floor=20, resume_at=60)
    led.observe(Observation.from_envelope(acct.token(), at=0.0, source="sync"), 0.0)
    book = PermitBook(led, id_prefix="t")
    assert book.submit("big", 1, 250, 0, 3600, 0.0) is None
    planned = led.earliest_grant_at(250, 0.0)
    assert planned == 5 + 7 * 60
    small_granted_before = 0
    big_granted_at = None
    for second in range(0, 600):
        now = float(second)
        acct.advance(second * 1000)
        decided = book.schedule(now)
        if big_granted_at is None:
            answer = book.submit(f"small-{second}", 1, 5, 0, 3600, now)
            decided += [answer] if answer is not None else []
        for d in grants(decided):
            status, env = acct.call(d.cost)
            assert status == 200
            book.settle(d.permit, Observation.from_envelope(env, now, "settle"), "ok", now)
            if d.worker == "big":
                big_granted_at = now
            elif big_granted_at is None:
                small_granted_before += 1
        if big_granted_at is not None:
            break
    assert big_granted_at == planned
    assert small_granted_before == 2  # 100 + 8 x 20 = 260: room for exactly two 5s
    assert acct.status_429 == 0


def test_small_requests_use_tokens_the_cap_would_waste() -> None:
    # 1195 of 1200: the next step can only add 5, so up to 15 tokens spent now are free.
    acct = KeepaAccount(rate=20, period_ms=60_000, balance=1195, next_refill_ms=5_000)
    led = Ledger(soft_floor=0, resume_at=0)
    led.observe(Observation.from_envelope(acct.token(), at=0.0, source="sync"), 0.0)
    book = PermitBook(led, id_prefix="t")
    assert book.submit("big", 1, 1200, 0, 3600, 0.0) is None
    a = book.submit("s", 1, 5, 0, 3600, 0.0)
    b = book.submit("s", 2, 10, 0, 3600, 0.0)
    c = book.submit("s", 3, 1, 0, 3600, 0.0)
    assert a is not None and a.kind == "grant"
    assert b is not None and b.kind == "grant"
    assert c is None  # one more token would delay the 1200
    for d in (a, b):
        acct.advance(1000)
        _, env = acct.call(d.cost)
        book.settle(d.permit, Observation.from_envelope(env, 1.0, "settle"), "ok", 1.0)
    assert book.next_wakeup(1.0) == 5.0
    acct.advance(5000)
    out = book.schedule(5.0)
    assert [(d.worker, d.kind) for d in out] == [("big", "grant")]
    assert acct.balance == 1200


def test_one_pass_grants_small_requests_only_up_to_the_heads_slack() -> None:
    book = book_with(obs(0, 0, refill_in_s=5), soft_floor=0, resume_at=0)
    assert book.submit("big", 1, 250, 0, 3600, 0) is None
    for seq in range(5):
        assert book.submit("small", seq, 5, 0, 3600, 0) is None
    # At 5: 20 tokens. The 250 needs 12 more steps (20 + 240 = 260): 10 to spare.
    planned = book.ledger.earliest_grant_at(250, 5)
    out = book.schedule(5)
    assert [(d.worker, d.cost) for d in grants(out)] == [("small", 5), ("small", 5)]
    assert book.ledger.earliest_grant_at(250, 5) == planned == 5 + 12 * 60
    assert book.queued_for("small") == 3


def test_recharge_holds_grants_until_resume_at_then_schedule_resumes() -> None:
    book = book_with(obs(0, 100, refill_in_s=10), soft_floor=20, resume_at=60)
    first = book.submit("w", 1, 85, 0, 3600, 0)
    assert first is not None and first.kind == "grant"  # leaves 15: recharge
    assert book.ledger.recharge_mode
    assert book.submit("w", 2, 1, 0, 3600, 0) is None  # 15 > 0, but recharging
    book.settle(first.permit, obs(1, 15, refill_in_s=9, source="settle", consumed=85), "ok", 1)
    assert book.schedule(129.9) == []  # 75 only at 130
    out = book.schedule(130)
    assert [(d.seq, d.kind) for d in out] == [(2, "grant")]


def test_higher_priority_goes_first_then_arrival() -> None:
    book = book_with(obs(0, 0, refill_in_s=10), soft_floor=0, resume_at=0)
    assert book.submit("a", 1, 10, 0, 3600, 0) is None
    assert book.submit("b", 1, 10, 5, 3600, 0) is None
    assert book.submit("c", 1, 10, 5, 3600, 0) is None
    out = grants(book.schedule(10))  # 20 tokens: two grants
    assert [d.worker for d in out] == ["b", "c"]


# --- retries ------------------------------------------------------------------------------


def test_a_retried_request_gets_the_same_answer_and_is_never_granted_twice() -> None:
    book = book_with(obs(0, 500))
    first = book.submit("w", 7, 10, 0, 60, 0)
    assert first is not None and first.kind == "grant"
    again = book.submit("w", 7, 10, 0, 60, 1)
    assert again == first
    assert book.ledger.in_flight() == 10
    assert book.stats(1)["granted"] == 1
    assert book.permits_held("w") == 1
    assert book.held_by_worker() == {"w": 1}
    # The same seq with another cost is not a retry.
    reused = book.submit("w", 7, 11, 0, 60, 1)
    assert reused is not None and reused.kind == "reject" and reused.reason == "seq_reused"
    assert book.submit("w", 7, 10, 0, 60, 2) == first


def test_a_retry_of_a_queued_request_stays_queued_once() -> None:
    book = book_with(obs(0, 5, refill_in_s=10))
    assert book.submit("w", 1, 500, 0, 3600, 0) is None
    assert book.submit("w", 1, 500, 0, 3600, 1) is None
    assert book.queued_for("w") == 1
    assert book.stats(1)["queued"] == 1


def test_answers_are_remembered_for_a_bounded_number_of_seqs() -> None:
    book = book_with(obs(0, 1200), soft_floor=0, resume_at=0)
    first = book.submit("w", 0, 1, 0, 60, 0)
    assert first is not None
    for seq in range(1, permits_mod.ANSWERS_PER_WORKER + 1):
        book.submit("w", seq, 1, 0, 60, 0)
    later = book.submit("w", 0, 1, 0, 60, 0)
    assert later is not None and later.permit != first.permit  # forgotten: a new request


def test_dropping_a_worker_cancels_its_queue_and_forgets_its_answers() -> None:
    book = book_with(obs(0, 50, refill_in_s=10), soft_floor=0, resume_at=0)
    held = book.submit("w", 1, 40, 0, 3600, 0)
    assert held is not None and held.kind == "grant"
    assert book.submit("w", 2, 40, 0, 3600, 0) is None
    dropped = book.drop_worker("w", 1)
    assert [p.seq for p in dropped] == [2]
    assert dropped[0].state == states.CANCELLED
    assert book.queued_for("w") == 0
    assert book.permits_held("w") == 1  # stays until settled or expired
    assert book.submit("w", 1, 40, 0, 3600, 2) != held


# --- rejects ------------------------------------------------------------------------------


def test_a_request_past_its_deadline_is_rejected() -> None:
    book = book_with(obs(0, 0, refill_in_s=100))
    assert book.submit("w", 1, 10, 0, 5.0, 0) is None
    assert book.schedule(4.999) == []
    out = book.schedule(5.0)
    assert [(d.kind, d.reason, d.seq) for d in out] == [("reject", "deadline", 1)]
    assert book.submit("w", 1, 10, 0, 5.0, 6) == out[0]
    assert book.queued_for("w") == 0
    assert book.stats(6)["rejected"] == 1


def test_too_large_is_rejected_with_max_cost() -> None:
    book = book_with(obs(0, 500), max_deficit=30)
    d = book.submit("w", 1, 1231, 0, 60, 0)
    assert d is not None
    assert (d.kind, d.reason, d.max_cost) == ("reject", "too_large", 1230)
    assert book.submit("w", 2, 1230, 0, 60, 0) is None  # possible, later


def test_too_large_waits_for_the_first_observation_then_is_rejected() -> None:
    book = book_with(None)
    assert book.submit("w", 1, 5000, 0, 60, 0) is None
    assert book.submit("w", 2, 10, 0, 60, 0) is None
    book.ledger.observe(obs(1, 500), 1)
    out = book.schedule(1)
    assert [(d.seq, d.kind, d.reason) for d in out] == [
        (1, "reject", "too_large"),
        (2, "grant", ""),
    ]


def test_a_plan_downgrade_rejects_queued_requests_that_became_too_large() -> None:
    book = book_with(obs(0, 0, refill_in_s=10, rate=20))
    assert book.submit("w", 1, 1000, 0, 3600, 0) is None
    book.ledger.observe(obs(1, 0, refill_in_s=9, rate=5), 1)
    out = book.schedule(1)
    assert [(d.reason, d.max_cost) for d in out] == [("too_large", 300)]


def test_bad_cost_queue_full_and_draining() -> None:
    book = book_with(obs(0, 0, refill_in_s=100))
    book.max_queued_per_worker = 2
    d = book.submit("w", 1, 0, 0, 60, 0)
    assert d is not None and d.reason == "bad_cost"
    assert book.submit("w", 2, 10, 0, 60, 0) is None
    assert book.submit("w", 3, 10, 0, 60, 0) is None
    d = book.submit("w", 4, 10, 0, 60, 0)
    assert d is not None and d.reason == "queue_full"
    book.set_draining(True)
    d = book.submit("v", 1, 10, 0, 60, 0)
    assert d is not None and d.reason == "draining"
    out = book.schedule(1)
    assert sorted((x.seq, x.reason) for x in out) == [(2, "draining"), (3, "draining")]


def test_cancel_removes_a_queued_request() -> None:
    book = book_with(obs(0, 0, refill_in_s=10))
    assert book.submit("w", 1, 10, 0, 60, 0) is None
    book.cancel("w", 1, 1)
    assert book.queued_for("w") == 0
    assert book.schedule(10) == []
    assert book.stats(10)["cancelled"] == 1


# --- settles and leases -------------------------------------------------------------------


def test_an_expired_lease_is_assumed_spent_and_a_late_settle_corrects_it() -> None:
    book = book_with(obs(0, 500, refill_in_s=59), soft_floor=0, resume_at=0)
    d = book.submit("w", 1, 100, 0, 60, 0)
    assert d is not None and d.kind == "grant" and d.lease_ttl_s == 150.0
    assert book.expire_leases(149.999) == []
    expired = book.expire_leases(150.0)
    assert [p.permit for p in expired] == [d.permit]
    assert expired[0].state == states.EXPIRED
    led = book.ledger
    assert led.needs_sync and led.assumed_spent == 100 and led.in_flight() == 0
    late = obs(2, 480, refill_in_s=57, source="settle", consumed=20, at=151)
    assert book.settle(d.permit, late, "ok", 151) is None
    assert led.assumed_spent == 0
    assert book.stats(151)["late_settles"] == 1


def test_settle_outcomes() -> None:
    book = book_with(obs(0, 500, refill_in_s=59), soft_floor=0, resume_at=0)
    led = book.ledger
    ok = book.submit("w", 1, 100, 0, 60, 0)
    lost = book.submit("w", 2, 100, 0, 60, 0)
    unsent = book.submit("w", 3, 100, 0, 60, 0)
    assert ok and lost and unsent
    assert led.available(0) == 200
    p = book.settle(ok.permit, obs(1, 400, refill_in_s=58, source="settle", consumed=100), "ok", 1)
    assert p is not None and p.state == states.SETTLED and p.settled_at == 1
    p = book.settle(lost.permit, None, "timeout", 2)
    assert p is not None and p.reason == "timeout"
    assert led.needs_sync and led.assumed_spent == 100
    p = book.settle(unsent.permit, None, "not_sent", 3)
    assert p is not None
    assert led.in_flight() == 0
    assert led.available(3) == 300
    # Unknown and already settled permits: None, counted.
    assert book.settle("nope", None, "ok", 4) is None
    assert book.settle(ok.permit, None, "ok", 4) is None
    stats = book.stats(4)
    assert stats["unknown_settles"] == 2
    assert stats["unknown_outcomes"] == 1
    assert stats["settled"] == 3


def test_a_worker_cannot_settle_another_workers_permit() -> None:
    book = book_with(obs(0, 500))
    d = book.submit("w", 1, 100, 0, 60, 0)
    assert d is not None
    assert book.settle(d.permit, None, "not_sent", 1, worker="intruder") is None
    assert book.ledger.in_flight() == 100


def test_finished_permits_are_forgotten_after_a_while() -> None:
    book = book_with(obs(0, 1200), soft_floor=0, resume_at=0)
    d = book.submit("w", 1, 1, 0, 60, 0)
    assert d is not None
    book.settle(d.permit, None, "not_sent", 1)
    assert book.permit(d.permit) is not None
    book.expire_leases(1 + permits_mod.FINISHED_KEEP_S)
    assert book.permit(d.permit) is None


def test_finished_permits_are_bounded_in_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(permits_mod, "MAX_FINISHED", 5)
    book = book_with(obs(0, 1200), soft_floor=0, resume_at=0)
    ids = []
    for seq in range(10):
        d = book.submit("w", seq, 1, 0, 60, 0)
        assert d is not None
        book.settle(d.permit, None, "not_sent", 0)
        ids.append(d.permit)
    assert [book.permit(i) is not None for i in ids] == [False] * 5 + [True] * 5


# --- timers -------------------------------------------------------------------------------


def test_next_wakeup_is_the_projected_refill_instant_while_waiting_on_tokens() -> None:
    led = Ledger(refill_period_s=0.05)
    led.observe(obs(0.1, 3, refill_in_s=0.03, rate=2), 0.1)
    book = PermitBook(led, lease_ttl_s=150.0, id_prefix="t")
    assert book.submit("w", 1, 10, 0, 60, 0.1) is None
    wake = book.next_wakeup(0.1)
    # 3 + 4 x 2 = 11 >= 10: the fourth step, at 0.13 + 3 x 0.05.
    assert wake == led.earliest_grant_at(10, 0.1)
    assert wake == pytest.approx(0.28)
    assert book.head_wait_s(0.1) == pytest.approx(0.18)
    assert book.schedule(wake - 1e-9) == []
    out = book.schedule(wake)  # the exact float: no busy loop one tick short
    assert [d.kind for d in out] == ["grant"]
    # Now the lease is the only timer.
    assert book.next_wakeup(wake) == wake + 150.0


def test_next_wakeup_includes_deadlines_and_is_none_when_idle() -> None:
    book = book_with(obs(0, 0, refill_in_s=30))
    assert book.next_wakeup(0) is None
    assert book.head_wait_s(0) is None
    assert book.submit("w", 1, 10, 0, 5.0, 0) is None
    assert book.next_wakeup(0) == 5.0
    assert book.head_wait_s(0) == 30.0


def test_oldest_wait_in_stats() -> None:
    book = book_with(obs(0, 0, refill_in_s=30))
    book.submit("w", 1, 10, 0, 60, 2)
    assert book.stats(5)["oldest_wait_s"] == 3
