"""The permit book's answers and records in full: every reject names its worker, seq, cost
and reason and is counted once; each permit's state, times and reason through every ending;
the stats view; the bounds of what it remembers. Written against the mutants that survived
the first ``make mutate`` (docs/MUTATION.md)."""

from __future__ import annotations

import math

from broker_logic.fakes import obs

from broker import states
from broker.ledger import Ledger
from broker.permits import (
    ANSWERS_PER_WORKER,
    FINISHED_KEEP_S,
    Decision,
    PermitBook,
)


def book(left: int = 500, *, rate: int = 20, **kwargs: float) -> PermitBook:
    led = Ledger(soft_floor=0, resume_at=0)
    assert led.observe(obs(0, left, refill_in_s=30, rate=rate), 0)
    return PermitBook(led, lease_ttl_s=150.0, id_prefix="t", **kwargs)  # type: ignore[arg-type]


def reject(worker: str, seq: int, cost: int, reason: str, max_cost: int = 1200) -> Decision:
    return Decision("reject", worker, seq, "", cost, 0.0, reason, max_cost)


# --- rejects: the whole answer, counted once -----------------------------------------------


def test_each_reject_reason_answers_the_request_exactly_and_is_counted_once() -> None:
    b = book(max_queued_per_worker=1)
    assert b.submit("w", 1, 0, 0, 60, 1) == reject("w", 1, 0, "bad_cost")
    assert b.submit("w", 2, 5, 0, 0.0, 1) == reject("w", 2, 5, "bad_deadline")
    assert b.submit("w", 3, 5, 0, math.inf, 1) == reject("w", 3, 5, "bad_deadline")
    assert b.submit("w", 4, 5, 0, -1, 1) == reject("w", 4, 5, "bad_deadline")
    assert b.submit("w", 5, 1201, 0, 60, 1) == reject("w", 5, 1201, "too_large")
    assert b.submit("q", 1, 5, 0, 60, 1) is not None  # granted
    assert b.submit("q", 2, 600, 0, 60, 1) is None  # 495 available: queued
    assert b.submit("q", 3, 5, 0, 60, 1) == reject("q", 3, 5, "queue_full")
    b.set_draining(True)
    assert b.submit("w", 6, 5, 0, 60, 1) == reject("w", 6, 5, "draining")
    s = b.stats(1)
    assert s["rejected"] == 7 and s["requested"] == 2
    assert s["rejected_by_reason"] == {
        "bad_cost": 1,
        "bad_deadline": 3,
        "too_large": 1,
        "queue_full": 1,
        "draining": 1,
    }
    # Each is remembered: asked again, the same answer, not counted again.
    assert b.submit("w", 2, 5, 0, 60, 1) == reject("w", 2, 5, "bad_deadline")
    assert b.stats(1)["rejected"] == s["rejected"]


def test_a_deadline_of_a_fraction_of_a_second_is_valid() -> None:
    b = book()
    d = b.submit("w", 1, 5, 0, 0.5, 1)
    assert d is not None and d.kind == "grant"


def test_a_seq_reused_with_another_cost_is_rejected_each_time_and_the_first_answer_stays():
    b = book()
    first = b.submit("w", 1, 5, 0, 60, 1)
    assert first is not None and first.kind == "grant"
    assert b.submit("w", 1, 6, 0, 60, 1) == reject("w", 1, 6, "seq_reused")
    assert b.submit("w", 1, 7, 0, 60, 1) == reject("w", 1, 7, "seq_reused")
    assert b.submit("w", 1, 5, 0, 60, 1) == first
    assert b.stats(1)["rejected_by_reason"] == {"seq_reused": 2}
    # While queued, too.
    b2 = book(left=0)
    assert b2.submit("w", 1, 5, 0, 60, 1) is None
    assert b2.submit("w", 1, 9, 0, 60, 1) == reject("w", 1, 9, "seq_reused")
    assert b2.submit("w", 1, 5, 0, 60, 1) is None
    assert b2.stats(1)["requested"] == 1


# --- permit ids, decisions, records --------------------------------------------------------


def test_permit_ids_count_from_one_under_the_prefix() -> None:
    b = book()
    ids = [b.submit("w", seq, 5, 0, 60, 1).permit for seq in (1, 2, 3)]  # type: ignore[union-attr]
    assert ids == ["t-1", "t-2", "t-3"]
    other = PermitBook(Ledger())
    mine = PermitBook(Ledger())
    assert len(other._prefix) == 8 and other._prefix != mine._prefix  # a fresh one per run


def test_a_grant_carries_the_lease_and_a_reject_none() -> None:
    b = book()
    g = b.submit("w", 1, 5, 0, 60, 1)
    assert g == Decision("grant", "w", 1, "t-1", 5, 150.0, "", 1200)
    b.submit("w", 2, 5, 0, 60, 1)
    b.set_draining(True)
    assert b.submit("w", 3, 5, 0, 60, 1).lease_ttl_s == 0.0  # type: ignore[union-attr]


def test_a_granted_permit_records_when_and_until_when() -> None:
    b = book(left=0)
    assert b.submit("w", 1, 5, 0, 600, 10) is None
    p = b.permit("t-1")
    assert p is not None and p.state == states.QUEUED and p.granted_at is None
    assert b.ledger.observe(obs(40, 100, refill_in_s=50), 40)
    [d] = b.schedule(40)
    assert d.kind == "grant"
    p = b.permit("t-1")
    assert p is not None and p.state == states.GRANTED
    assert p.granted_at == 40 and p.lease_until == 190 and p.deadline_at == 610
    s = b.stats(40)
    assert s["granted"] == 1 and s["mean_wait_s"] == 30.0 and s["in_flight"] == 1


def test_the_mean_wait_is_over_all_grants() -> None:
    b = book(left=0)
    b.submit("w", 1, 5, 0, 600, 10)
    b.submit("w", 2, 5, 0, 600, 20)
    assert b.ledger.observe(obs(40, 100, refill_in_s=50), 40)
    assert len(b.schedule(40)) == 2
    assert b.stats(40)["mean_wait_s"] == 25.0  # (30 + 20) / 2
    assert book().stats(0)["mean_wait_s"] == 0.0


def test_settle_records_and_counts_each_ending() -> None:
    b = book()
    for seq in (1, 2, 3):
        b.submit("w", seq, 10, 0, 60, 1)
    b.settle("t-1", obs(1.5, 490, refill_in_s=28.5, source="settle", consumed=10), "ok", 2)
    b.settle("t-2", None, "timeout", 3)
    b.settle("t-3", None, "not_sent", 4)
    p1, p2, p3 = (b.permit(f"t-{i}") for i in (1, 2, 3))
    assert p1 is not None and (p1.state, p1.reason, p1.settled_at) == ("settled", "ok", 2)
    assert p2 is not None and (p2.state, p2.reason, p2.finished_at) == ("settled", "timeout", 3)
    assert p3 is not None and p3.reason == "not_sent"
    s = b.stats(4)
    assert (s["settled"], s["unknown_outcomes"], s["in_flight"]) == (3, 1, 0)
    # The unknown outcome is assumed spent; the unsent one is not.
    assert b.ledger.assumed_spent == 10 and b.ledger.tokens_spent == 20
    assert b.ledger.available(4) == 480


def test_an_unsent_call_with_an_envelope_teaches_the_ledger() -> None:
    b = book()
    b.submit("w", 1, 10, 0, 60, 1)
    b.settle("t-1", obs(1.5, 470, refill_in_s=28.5, source="settle"), "not_sent", 2)
    assert b.ledger.observation is not None and b.ledger.observation.tokens_left == 470
    assert b.ledger.tokens_spent == 0 and b.ledger.available(2) == 470


def test_a_settle_from_another_worker_or_twice_is_unknown_and_changes_nothing() -> None:
    b = book()
    b.submit("w", 1, 10, 0, 60, 1)
    assert b.settle("t-1", None, "ok", 2, worker="other") is None
    assert b.settle("t-9", None, "ok", 2) is None
    assert b.permit("t-1").state == states.GRANTED  # type: ignore[union-attr]
    assert b.settle("t-1", None, "ok", 2, worker="w") is not None
    assert b.settle("t-1", None, "ok", 3) is None
    s = b.stats(3)
    assert (s["unknown_settles"], s["late_settles"], s["settled"]) == (3, 0, 1)


def test_a_late_settle_of_an_expired_permit_teaches_the_ledger_or_releases_it() -> None:
    b = book()
    b.submit("w", 1, 10, 0, 60, 1)
    b.submit("w", 2, 10, 0, 60, 1)
    b.submit("w", 3, 10, 0, 60, 1)
    expired = b.expire_leases(151)
    assert [p.permit for p in expired] == ["t-1", "t-2", "t-3"]
    p = b.permit("t-1")
    assert p is not None and (p.state, p.reason, p.finished_at) == ("expired", "lease", 151)
    assert b.stats(151)["expired"] == 3 and b.ledger.assumed_spent == 30
    late = obs(100, 500 + 20 - 4, refill_in_s=-70 + 60 * 2, source="settle", consumed=4, at=152)
    assert b.settle("t-1", late, "ok", 152, worker="w") is None
    assert b.ledger.tokens_spent == 30 - 10 + 4
    assert b.settle("t-2", None, "not_sent", 153) is None  # never sent: not spent after all
    assert b.ledger.assumed_spent == 10 and b.ledger.tokens_spent == 14
    assert b.settle("t-3", None, "ok", 153, worker="someone") is None  # not its worker
    s = b.stats(153)
    assert (s["late_settles"], s["unknown_settles"]) == (2, 1)
    assert b.ledger.assumed_spent == 10


def test_a_lease_expires_at_its_instant_not_before() -> None:
    b = book()
    b.submit("w", 1, 10, 0, 60, 1)
    assert b.expire_leases(150.999) == []
    assert len(b.expire_leases(151)) == 1


# --- cancels and departed workers ----------------------------------------------------------


def test_cancel_finishes_the_queued_request_and_answers_its_retry() -> None:
    b = book(left=0)
    b.submit("w", 1, 5, 0, 60, 1)
    b.cancel("w", 1, 2)
    p = b.permit("t-1")
    assert p is not None and (p.state, p.reason, p.finished_at) == ("cancelled", "cancelled", 2)
    assert b.stats(2)["cancelled"] == 1 and b.stats(2)["queued"] == 0
    assert b.submit("w", 1, 5, 0, 60, 3) == Decision(
        "reject", "w", 1, "t-1", 5, 0.0, "cancelled", 1200
    )
    b.cancel("w", 1, 4)  # nothing queued under it now
    assert b.stats(4)["cancelled"] == 1


def test_a_dropped_worker_loses_its_queue_and_its_answers_not_others() -> None:
    b = book(left=0)
    b.submit("w", 1, 5, 0, 60, 1)
    b.submit("w", 2, 5, 0, 60, 1)
    b.submit("x", 1, 5, 0, 60, 1)
    assert b.submit("w", 3, 0, 0, 60, 1) is not None  # a remembered reject
    dropped = b.drop_worker("w", 2)
    assert [p.permit for p in dropped] == ["t-1", "t-2"]
    p = b.permit("t-1")
    assert p is not None and (p.state, p.reason, p.finished_at) == ("cancelled", "worker_gone", 2)
    assert b.stats(2)["cancelled"] == 2 and b.queued_for("w") == 0 and b.queued_for("x") == 1
    # Its answers are gone: the same seq is a new request now (cost 0 again: counted again).
    b.submit("w", 3, 0, 0, 60, 3)
    assert b.stats(3)["rejected"] == 2


def test_queued_counts_per_worker_go_down_to_nothing() -> None:
    b = book(left=0, max_queued_per_worker=2)
    b.submit("w", 1, 5, 0, 60, 1)
    b.submit("w", 2, 5, 0, 60, 1)
    assert b.queued_for("w") == 2
    b.cancel("w", 1, 2)
    assert b.queued_for("w") == 1
    b.submit("w", 3, 5, 0, 60, 2)  # room again
    assert b.queued_for("w") == 2
    b.cancel("w", 2, 3)
    b.cancel("w", 3, 3)
    assert b.queued_for("w") == 0 and "w" not in b._queued_per_worker


# --- scheduling at the boundaries ----------------------------------------------------------


def test_one_token_available_is_enough_to_grant_a_one_token_request() -> None:
    b = book(left=1)
    d = b.submit("w", 1, 1, 0, 60, 1)
    assert d is not None and d.kind == "grant"


def test_a_queued_request_behind_a_blocked_head_fits_in_one_token_of_slack() -> None:
    b = book(left=21)
    assert b.submit("big", 1, 40, 0, 600, 1) is None  # 21 + 20 at 30 = 41: granted at 30
    d = b.submit("small", 1, 1, 0, 600, 1)  # 41 - 1 = 40 still grants the head at 30
    assert d is not None and d.kind == "grant"
    assert b.submit("small", 2, 1, 0, 600, 1) is None  # one more would delay it
    [g] = [d for d in b.schedule(30) if d.kind == "grant"]
    assert g.worker == "big"


def test_expired_deadlines_are_rejected_at_the_instant_with_their_time() -> None:
    b = book(left=0)
    b.submit("w", 1, 5, 0, 10, 1)
    assert b.schedule(10.999) == []
    [d] = b.schedule(11)
    assert d == Decision("reject", "w", 1, "t-1", 5, 0.0, "deadline", 1200)
    p = b.permit("t-1")
    assert p is not None and (p.state, p.reason, p.finished_at) == ("rejected", "deadline", 11)
    assert b.stats(11)["rejected_by_reason"] == {"deadline": 1}


def test_draining_rejects_what_is_queued_at_the_next_schedule() -> None:
    b = book(left=0)
    b.submit("w", 1, 5, 0, 60, 1)
    b.set_draining(True)
    [d] = b.schedule(2)
    assert (d.kind, d.reason) == ("reject", "draining")
    assert b.stats(2)["draining"] is True
    assert book().stats(0)["draining"] is False


# --- timers and the stats view -------------------------------------------------------------


def test_the_stats_view_in_full() -> None:
    b = book(left=0)
    b.submit("w", 1, 5, 0, 600, 10)
    b.submit("w", 2, 25, 0, 600, 12)
    s = b.stats(14)
    assert s == {
        "requested": 2,
        "granted": 0,
        "settled": 0,
        "expired": 0,
        "rejected": 0,
        "rejected_by_reason": {},
        "cancelled": 0,
        "queued": 2,
        "oldest_wait_s": 4.0,
        "mean_wait_s": 0.0,
        "head_wait_s": 16.0,  # the first refill, at 30
        "in_flight": 0,
        "unknown_settles": 0,
        "late_settles": 0,
        "unknown_outcomes": 0,
        "draining": False,
    }
    assert book().stats(0)["oldest_wait_s"] is None and book().stats(0)["head_wait_s"] is None


def test_head_wait_is_zero_when_grantable_and_infinite_when_never() -> None:
    b = book(left=0)
    b.submit("w", 1, 5, 0, 600, 1)
    assert b.ledger.observe(obs(1, 0, refill_in_s=29, rate=0), 1)  # the plan ended
    assert b.head_wait_s(1) == math.inf
    b2 = book(left=0)
    b2.submit("w", 1, 5, 0, 600, 1)
    assert b2.head_wait_s(1) == 29.0
    assert b2.ledger.observe(obs(2, 100, refill_in_s=28), 2)
    assert b2.head_wait_s(2) == 0.0


def test_next_wakeup_looks_at_the_next_refill_only_with_others_behind_the_head() -> None:
    b = book(left=0)
    b.submit("w", 1, 30, 0, 6000, 1)  # needs two refills: at 90
    assert b.next_wakeup(1) == 90
    b.submit("w", 2, 5, 0, 6000, 1)  # behind it, may fit at the refill at 30
    assert b.next_wakeup(1) == 30
    b3 = book(left=100)
    b3.submit("w", 1, 5, 0, 60, 1)
    assert b3.next_wakeup(1) == 151  # only the lease
    assert book().next_wakeup(0) is None


def test_next_wakeup_is_now_when_a_queued_request_can_be_granted() -> None:
    b = book(left=0)
    b.submit("w", 1, 5, 0, 6000, 1)
    assert b.ledger.observe(obs(2, 100, refill_in_s=28), 2)
    assert b.next_wakeup(2) == 2


def test_permit_finds_queued_granted_and_finished_ones() -> None:
    b = book(left=10)
    b.submit("w", 1, 10, 0, 600, 1)
    b.submit("w", 2, 10, 0, 600, 1)
    assert b.permit("t-1").state == states.GRANTED  # type: ignore[union-attr]
    assert b.permit("t-2").state == states.QUEUED  # type: ignore[union-attr]
    b.settle("t-1", None, "ok", 2)
    assert b.permit("t-1").state == states.SETTLED  # type: ignore[union-attr]
    assert b.permit("t-3") is None


# --- what the book remembers, and for how long ---------------------------------------------


def test_finished_permits_are_kept_for_their_time_then_pruned_oldest_first() -> None:
    b = book()
    b.submit("w", 1, 5, 0, 60, 1)
    b.submit("w", 2, 5, 0, 60, 1)
    b.settle("t-1", None, "not_sent", 10)
    b.settle("t-2", None, "not_sent", 20)
    b.expire_leases(10 + FINISHED_KEEP_S - 0.001)
    assert b.permit("t-1") is not None
    b.expire_leases(10 + FINISHED_KEEP_S)
    assert b.permit("t-1") is None and b.permit("t-2") is not None
    b.expire_leases(20 + FINISHED_KEEP_S)
    assert b.permit("t-2") is None


def test_answers_are_kept_for_the_last_seqs_of_a_worker() -> None:
    b = book()
    for seq in range(1, ANSWERS_PER_WORKER + 2):
        b.submit("w", seq, 0, 0, 60, 1)  # remembered rejects
    counted = b.stats(1)["rejected"]
    b.submit("w", 2, 0, 0, 60, 1)  # still remembered: not counted again
    assert b.stats(1)["rejected"] == counted
    b.submit("w", 1, 0, 0, 60, 1)  # forgotten (the oldest): a new reject
    assert b.stats(1)["rejected"] == counted + 1


# --- order, outbox, slack with a deficit ---------------------------------------------------


def test_requests_of_one_priority_are_granted_in_arrival_order_past_ten() -> None:
    b = book(left=0, max_queued_per_worker=20)
    for seq in range(1, 13):
        assert b.submit("w", seq, 1, 0, 6000, 1) is None
    assert b.ledger.observe(obs(2, 100, refill_in_s=28), 2)
    granted = [d.seq for d in b.schedule(2) if d.kind == "grant"]
    assert granted == list(range(1, 13))


def test_decisions_made_for_others_during_a_submit_go_out_at_the_next_schedule() -> None:
    b = book(left=0)
    b.submit("a", 1, 5, 0, 10, 1)  # its deadline passes at 11
    assert b.submit("b", 1, 5, 0, 600, 12) is None
    out = b.schedule(12)
    assert [(d.worker, d.kind, d.reason) for d in out] == [("a", "reject", "deadline")]
    assert b.next_wakeup(12) is not None


def test_every_deadline_reject_is_counted() -> None:
    b = book(left=0)
    b.submit("w", 1, 5, 0, 10, 1)
    b.submit("w", 2, 5, 0, 10, 1)
    assert len(b.schedule(11)) == 2
    s = b.stats(11)
    assert s["rejected"] == 2 and s["rejected_by_reason"] == {"deadline": 2}


def test_a_small_request_behind_a_big_one_that_does_not_fit_is_still_considered() -> None:
    b = book(left=21)
    assert b.submit("big", 1, 40, 0, 600, 1) is None  # granted at 30: 1 token of slack
    assert b.submit("mid", 1, 5, 0, 600, 1) is None  # does not fit in the slack
    d = b.submit("small", 1, 1, 0, 600, 1)  # fits behind both
    assert d is not None and d.kind == "grant"


def test_the_slack_counts_the_allowed_deficit() -> None:
    led = Ledger(soft_floor=-100, resume_at=0, max_deficit=20)
    assert led.observe(obs(0, 5, refill_in_s=30), 0)
    b = PermitBook(led, lease_ttl_s=150.0, id_prefix="t")
    assert b.submit("big", 1, 100, 0, 6000, 1) is None  # needs 80: four refills
    d = b.submit("small", 1, 5, 0, 6000, 1)  # 5 more now still grants it at the 4th
    assert d is not None and d.kind == "grant"


def test_every_cancel_and_unknown_outcome_is_counted() -> None:
    b = book(left=0)
    b.submit("w", 1, 5, 0, 60, 1)
    b.submit("w", 2, 5, 0, 60, 1)
    b.cancel("w", 1, 2)
    b.cancel("w", 2, 2)
    assert b.stats(2)["cancelled"] == 2
    b2 = book()
    for seq in (1, 2, 3):
        b2.submit("w", seq, 5, 0, 60, 1)
    b2.settle("t-1", obs(1.5, 495, refill_in_s=28.5, source="settle", consumed=5), "ok", 2)
    assert b2.stats(2)["unknown_outcomes"] == 0
    b2.settle("t-2", None, "timeout", 2)
    b2.settle("t-3", None, "error", 2)
    assert b2.stats(2)["unknown_outcomes"] == 2


def test_dropping_a_worker_the_book_never_heard_of_is_harmless() -> None:
    assert book().drop_worker("nobody", 1) == []


def test_a_wait_under_a_second_is_shown_as_it_is() -> None:
    b = book(left=0)
    b.submit("w", 1, 5, 0, 60, 10)
    assert b.stats(10.5)["oldest_wait_s"] == 0.5


def test_an_unsent_call_during_recharge_releases_its_tokens_at_its_instant() -> None:
    led = Ledger(soft_floor=20, resume_at=60)
    assert led.observe(obs(0, 100, refill_in_s=30), 0)
    b = PermitBook(led, lease_ttl_s=150.0, id_prefix="t")
    b.submit("w", 1, 90, 0, 60, 1)  # 10 left: recharge
    assert led.recharge_mode
    b.settle("t-1", None, "not_sent", 2)
    assert led.recharge_mode is False and led.available(2) == 100
