"""The broker core without sockets: messages in, messages out, on a clock the test moves."""

from __future__ import annotations

from doubles import OTHER_HOST, CoreHarness

from broker import states
from common import protocol
from common.protocol import RejectReason, SettleStatus


def registered(**overrides: object) -> CoreHarness:
    """A core that knows Keepa's state (100 tokens, 5 a step) and one worker, w1."""
    h = CoreHarness(broker__soft_floor=0, broker__resume_at=0, **overrides)
    welcome = h.hello(b"w1")
    assert isinstance(welcome, protocol.Welcome)
    h.advance(0.0)  # the first housekeeping asks Keepa /token before any grant
    h.answer_sync(tokens_left=100, rate=5)
    return h


def test_hello_request_grant_settle() -> None:
    h = CoreHarness(broker__soft_floor=0, broker__resume_at=0)
    (welcome,) = [h.hello(b"w1", "w1")]
    assert isinstance(welcome, protocol.Welcome) and welcome.lease_ttl_s == 10.0
    # No grant before Keepa's state is known: queued, and a /token asked for.
    assert h.send(b"w1", protocol.Request(seq=1, cost=10)) == []
    h.advance(0.0)
    assert h.sync_requests
    h.answer_sync(tokens_left=100, rate=5)
    sent = h.advance(0.0)
    grants = [m for ident, m in sent if isinstance(m, protocol.Grant)]
    assert len(grants) == 1 and grants[0].seq == 1 and grants[0].cost == 10
    assert h.core.ledger.in_flight() == 10
    from doubles import envelope

    settle = protocol.Settle(
        permit=grants[0].permit,
        status=SettleStatus.OK,
        envelope=envelope(h.now, 90, 5, consumed=10).to_wire(),
    )
    assert h.send(b"w1", settle) == []
    assert h.core.ledger.in_flight() == 0
    state = h.core.snapshot(h.now)
    assert state.permits.settled == 1 and state.tokens.spent == 10


def test_a_queued_request_is_granted_at_the_refill() -> None:
    h = registered()
    assert isinstance(h.send(b"w1", protocol.Request(seq=1, cost=100))[0], protocol.Grant)
    # Nothing left: the next request waits for the refill step (5 a second).
    assert h.send(b"w1", protocol.Request(seq=2, cost=5)) == []
    assert h.core.registry.by_identity(b"w1").state == states.WAITING  # type: ignore[union-attr]
    assert not [m for _, m in h.advance(0.5) if isinstance(m, protocol.Grant)]
    grants = [m for _, m in h.advance(0.6) if isinstance(m, protocol.Grant)]
    assert [g.seq for g in grants] == [2]
    assert h.core.registry.by_identity(b"w1").state == states.ALIVE  # type: ignore[union-attr]


def test_a_silent_worker_on_another_host_is_sent_kill_then_gone() -> None:
    h = registered()
    rec = h.core.registry.by_identity(b"w1")
    assert rec is not None and rec.host == OTHER_HOST
    sent: list[tuple[bytes, protocol.Message]] = []
    for _ in range(40):  # liveness 3 x heartbeat 1 s; scans every 0.1 s at the most
        sent += h.advance(0.1)
        if rec.state == states.KILLING:
            break
    kills = [m for ident, m in sent if isinstance(m, protocol.Kill) and ident == b"w1"]
    assert rec.state == states.KILLING and kills and kills[0].reason == states.KILL_SILENT
    assert h.signals == []  # another host: a message, never a signal
    h.advance(1.1)  # the kill grace (1 s) runs out
    assert rec.state == states.GONE
    assert h.core.snapshot(h.now).kills_by_action == {"kill_message": 1}


def test_a_request_from_a_killed_worker_is_rejected() -> None:
    h = registered()
    rec = h.core.registry.by_identity(b"w1")
    assert rec is not None
    rec.set_state(states.SILENT, h.now)  # (found silent by a scan)
    h.core.registry.mark_killing(rec, h.now)
    (reply,) = h.send(b"w1", protocol.Request(seq=1, cost=1))
    assert isinstance(reply, protocol.Reject) and reply.reason == RejectReason.KILLED


def test_a_retried_request_gets_the_same_grant() -> None:
    h = registered()
    (first,) = h.send(b"w1", protocol.Request(seq=7, cost=10))
    (again,) = h.send(b"w1", protocol.Request(seq=7, cost=10))
    assert isinstance(first, protocol.Grant) and again == first
    assert h.core.snapshot(h.now).permits.granted == 1
    assert h.core.ledger.in_flight() == 10  # counted once


def test_a_retried_settle_counts_its_spend_once() -> None:
    from doubles import envelope

    h = registered()
    (grant,) = h.send(b"w1", protocol.Request(seq=1, cost=10))
    assert isinstance(grant, protocol.Grant)
    env = envelope(h.now, 90, 5, consumed=10).to_wire()
    for _ in range(2):
        h.send(b"w1", protocol.Settle(permit=grant.permit, status="ok", envelope=env))
    assert h.core.tokens_spent == 10


def test_a_grant_that_cannot_be_delivered_is_released() -> None:
    h = registered()
    h.sent.fail_next = 1  # the worker's queue is full
    assert h.send(b"w1", protocol.Request(seq=1, cost=10)) == []
    assert h.core.ledger.in_flight() == 0 and h.core.send_failures == 1


def test_bad_frames_and_unregistered_peers_are_answered_and_counted() -> None:
    h = CoreHarness()
    (err,) = h.send_frames([b"x", b"a", b"b", b"c"])
    assert isinstance(err, protocol.Error) and err.code == protocol.ErrorCode.BAD_FRAMES
    (disc,) = h.send(b"stranger", protocol.Request(seq=1, cost=1))
    assert isinstance(disc, protocol.Disconnect)
    assert h.core.bad_messages == {"bad_frames": 1, "unregistered": 1}


def test_status_is_the_snapshot_as_a_dict() -> None:
    h = registered()
    snap = h.core.snapshot(h.now)
    state = h.core.status(h.now)
    assert state["tokens"]["available"] == snap.tokens.available
    assert state["permits"]["granted"] == snap.permits.granted
    assert [w["id"] for w in state["workers"]] == ["w1"]
    assert "summary: tokens" in h.core.summary_line(h.now)


def test_the_wire_status_reads_back_into_the_same_snapshot() -> None:
    from common.run import progress_line
    from common.status import StatusSnapshot

    h = registered()
    h.send(b"w1", protocol.Request(seq=1, cost=10))
    state = h.core.status(h.now)
    back = StatusSnapshot.from_dict(state)
    assert back.as_dict() == state
    assert back.tokens.in_flight == 10 and back.permits.granted == 1
    line = progress_line(state, 3.0)
    assert "permits 1 granted, 0 queued" in line and "workers 1/1" in line
    del state["permits"]["granted"]
    assert "unreadable broker status" in progress_line(state, 3.0)
