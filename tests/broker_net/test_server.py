"""The broker over real sockets (a broker thread on a random port, a fake Keepa /token):
HELLO/WELCOME, heartbeats both ways, REQUEST -> GRANT -> SETTLE, retries, queueing until the
projected refill, DISCONNECT for strangers, bounds, sync failures, draining."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from broker_net.net_support import FakeKeepa, broker_settings, status, worker_status
from doubles import Peer
from support import wait_until

from broker.server import HANDLERS, Broker
from common import protocol
from common.config import BrokerSettings

MAX_COST = 1200 + BrokerSettings().max_deficit  # the fake account's cap (rate 20) + the deficit


def test_every_handler_exists() -> None:
    for type_, name in HANDLERS.items():
        assert type_ in protocol.MESSAGE_TYPES
        assert callable(getattr(Broker, name))


def test_hello_welcome(serve: Callable[..., Broker], peers: Callable[..., Peer]) -> None:
    broker = serve(broker_settings(broker__lease_ttl_s=42.0))
    welcome = peers(broker.address).hello("w1")
    assert welcome.heartbeat_s == pytest.approx(0.2)
    assert welcome.liveness == 50
    assert welcome.lease_ttl_s == pytest.approx(42.0)
    assert welcome.broker_id == status(broker.address)["broker_id"]
    # The fake account: refill rate 20 -> cap 1200, + broker.max_deficit.
    assert welcome.max_cost == MAX_COST
    w = worker_status(broker.address, "w1")
    assert w is not None and w["state"] == "alive" and w["pid"] == 4242


def test_heartbeats_both_ways(serve: Callable[..., Broker], peers: Callable[..., Peer]) -> None:
    broker = serve()
    peer = peers(broker.address)
    peer.hello("w1")
    hb = peer.expect(protocol.Heartbeat)  # the broker heartbeats an idle worker
    assert hb.max_cost == MAX_COST and "max_cost" not in hb.info  # a typed field since protocol 2
    assert hb.spare == 0  # 1000 + 20 at the next refill: below the cap, nothing lost
    pipeline = {"candidates_waiting": 7, "deals_live": 3, "deals_committed": 2}
    peer.send(
        protocol.Heartbeat(
            progress=5, stage="ingest", items_done=3, info={"pipeline": pipeline, "x": 1}
        )
    )

    def reported() -> dict[str, Any] | None:
        w = worker_status(broker.address, "w1")
        return w if w and w["progress"] == 5 else None

    w = wait_until(reported, 10, message="the heartbeat recorded")
    assert w["stage"] == "ingest" and w["items_done"] == 3
    assert status(broker.address)["pipeline"] == pipeline


def test_request_grant_settle_round_trip(
    serve: Callable[..., Broker], peers: Callable[..., Peer], fake_keepa: FakeKeepa
) -> None:
    broker = serve()
    peer = peers(broker.address)
    peer.hello("w1")
    peer.send(protocol.Request(seq=1, cost=30))
    grant = peer.expect(protocol.Grant)
    assert grant.seq == 1 and grant.cost == 30 and grant.lease_ttl_s == pytest.approx(30.0)
    held = status(broker.address)
    assert held["tokens"]["in_flight"] == 30
    assert held["workers"][0]["permits_held"] == 1
    fake_keepa.tokens_left -= 27
    env = fake_keepa.envelope(consumed=27)
    peer.send(protocol.Settle(grant.permit, "ok", env.to_wire(), 200))

    def settled() -> dict[str, Any] | None:
        s = status(broker.address)
        return s if s["permits"]["settled"] == 1 else None

    s = wait_until(settled, 10, message="the settle recorded")
    assert s["tokens"]["in_flight"] == 0
    assert s["tokens"]["spent"] == 27
    assert s["workers"][0]["tokens_spent"] == 27
    assert s["tokens"]["now"] == fake_keepa.tokens_left
    # A retried SETTLE counts once.
    peer.send(protocol.Settle(grant.permit, "ok", env.to_wire(), 200))
    peer.send(protocol.Heartbeat(progress=1))
    wait_until(lambda: worker_status(broker.address, "w1")["progress"] == 1, 10)  # type: ignore[index]
    assert status(broker.address)["tokens"]["spent"] == 27


def test_a_retried_request_is_not_granted_twice(
    serve: Callable[..., Broker], peers: Callable[..., Peer]
) -> None:
    broker = serve()
    peer = peers(broker.address)
    peer.hello("w1")
    peer.send(protocol.Request(seq=7, cost=40))
    first = peer.expect(protocol.Grant)
    peer.send(protocol.Request(seq=7, cost=40))
    again = peer.expect(protocol.Grant)
    assert again.permit == first.permit
    s = status(broker.address)
    assert s["permits"]["granted"] == 1
    assert s["tokens"]["in_flight"] == 40


def test_a_queued_request_is_granted_at_the_projected_refill(
    serve: Callable[..., Broker], peers: Callable[..., Peer], fake_keepa: FakeKeepa
) -> None:
    fake_keepa.tokens_left = 0
    fake_keepa.refill_rate = 100
    fake_keepa.refill_in_ms = 700
    broker = serve(broker_settings(keepa__refill_period_s=0.5))
    peer = peers(broker.address)
    peer.hello("w1")
    wait_until(lambda: status(broker.address)["tokens"]["now"] == 0, 10, message="first sync")
    peer.send(protocol.Request(seq=1, cost=50))
    wait_until(
        lambda: worker_status(broker.address, "w1")["state"] == "waiting",  # type: ignore[index]
        10,
        message="the worker shown waiting",
    )
    # Nobody sends anything: the broker wakes at the refill instant and pushes the grant.
    grant = peer.expect(protocol.Grant)
    assert grant.seq == 1
    s = status(broker.address)
    assert s["permits"]["granted"] == 1
    assert s["workers"][0]["state"] == "alive"


def test_a_peer_that_never_said_hello_gets_disconnect(
    serve: Callable[..., Broker], peers: Callable[..., Peer]
) -> None:
    broker = serve()
    peer = peers(broker.address)
    for msg in (
        protocol.Request(seq=1, cost=5),
        protocol.Heartbeat(progress=1),
        protocol.Settle("p-1", "ok"),
        protocol.Cancel(seq=1),
        protocol.Bye(),
    ):
        peer.send(msg)
        assert isinstance(peer.recv(), protocol.Disconnect)
    assert status(broker.address)["bad_messages"]["unregistered"] == 5
    peer.hello("w1")  # and HELLO works after it
    peer.send(protocol.Request(seq=1, cost=5))
    peer.expect(protocol.Grant)


def test_a_broker_restart_makes_workers_hello_again(
    serve: Callable[..., Broker], peers: Callable[..., Peer], fake_keepa: FakeKeepa
) -> None:
    first = serve()
    address = first.address
    peer = peers(address)
    peer.hello("w1")
    first.stop()
    assert first.join(10)
    # A new broker on the same address knows nobody.
    second = serve(broker_settings(broker__address=address))
    peer.send(protocol.Heartbeat(progress=1))
    assert isinstance(peer.recv(), protocol.Disconnect)
    assert peer.hello("w1").broker_id == second.broker_id != first.broker_id


def test_bounds_workers_and_queue(
    serve: Callable[..., Broker], peers: Callable[..., Peer], fake_keepa: FakeKeepa
) -> None:
    fake_keepa.tokens_left = 0  # nothing is grantable: requests queue
    broker = serve(broker_settings(broker__max_workers=2, broker__max_queued_per_worker=3))
    a, b, c = (peers(broker.address) for _ in range(3))
    a.hello("a")
    b.hello("b")
    c.send(protocol.Hello("c", 4242, "elsewhere", 1, "test", "test"))
    err = c.expect(protocol.Error)
    assert err.code == "too_many_workers"
    for seq in range(1, 4):
        a.send(protocol.Request(seq=seq, cost=5, deadline_s=60))
    a.send(protocol.Request(seq=4, cost=5, deadline_s=60))
    reject = a.expect(protocol.Reject)
    assert (reject.seq, reject.reason) == (4, "queue_full")
    s = status(broker.address)
    assert s["permits"]["queued"] == 3
    assert s["bad_messages"]["too_many_workers"] == 1
    # BYE frees the place and cancels the queue.
    a.send(protocol.Bye("done"))
    wait_until(lambda: status(broker.address)["permits"]["queued"] == 0, 10)
    c.hello("c")


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (protocol.Request(seq=1, cost=0), "bad_cost"),
        (protocol.Request(seq=1, cost=-5), "bad_cost"),
        (protocol.Request(seq=1, cost=5, deadline_s=float("nan")), "bad_deadline"),
        (protocol.Request(seq=1, cost=5, deadline_s=-1.0), "bad_deadline"),
        (protocol.Request(seq=-1, cost=5), "bad_seq"),
        (protocol.Request(seq=1, cost=5, priority=10**12), "bad_priority"),
        (protocol.Request(seq=1, cost=10**6), "too_large"),
    ],
)
def test_nonsense_requests_are_rejected(
    serve: Callable[..., Broker],
    peers: Callable[..., Peer],
    request_: protocol.Request,
    reason: str,
) -> None:
    broker = serve()
    peer = peers(broker.address)
    welcome = peer.hello("w1")
    peer.send(request_)
    reject = peer.expect(protocol.Reject)
    assert reject.reason == reason
    if reason == "too_large":
        assert reject.max_cost == welcome.max_cost == MAX_COST


def test_settles_count_429s_and_errors(
    serve: Callable[..., Broker], peers: Callable[..., Peer], fake_keepa: FakeKeepa
) -> None:
    broker = serve()
    peer = peers(broker.address)
    peer.hello("w1")
    peer.send(protocol.Request(seq=1, cost=5))
    g1 = peer.expect(protocol.Grant)
    peer.send(protocol.Request(seq=2, cost=5))
    g2 = peer.expect(protocol.Grant)
    peer.send(protocol.Settle(g1.permit, "http_error", fake_keepa.envelope().to_wire(), 429))
    peer.send(protocol.Settle(g2.permit, "timeout"))
    wait_until(lambda: status(broker.address)["permits"]["settled"] == 2, 10)
    keepa = status(broker.address)["keepa"]
    assert keepa["status_429"] == 1
    assert keepa["errors"] == 2
    # The timeout is an unknown outcome: the broker asks Keepa for the truth.
    wait_until(lambda: status(broker.address)["keepa"]["token_syncs"] >= 2, 10)


def test_no_grant_until_keepa_answers(
    serve: Callable[..., Broker], peers: Callable[..., Peer], fake_keepa: FakeKeepa
) -> None:
    fake_keepa.fail = 2
    broker = serve(synced=False)
    peer = peers(broker.address)
    peer.hello("w1")
    peer.send(protocol.Request(seq=1, cost=5))
    grant = peer.expect(protocol.Grant, timeout=20)  # after two failures and their backoff
    assert grant.seq == 1
    s = status(broker.address)
    assert s["keepa"]["errors"] == 2 and s["keepa"]["sync_errors"] == 2
    assert s["keepa"]["token_syncs"] >= 1
    assert fake_keepa.calls >= 3


def test_draining_rejects_and_waits_for_settles(
    serve: Callable[..., Broker], peers: Callable[..., Peer], fake_keepa: FakeKeepa
) -> None:
    broker = serve(drain_timeout_s=20.0)
    peer = peers(broker.address)
    peer.hello("w1")
    peer.send(protocol.Request(seq=1, cost=5))
    grant = peer.expect(protocol.Grant)
    broker.begin_drain()
    wait_until(lambda: status(broker.address)["draining"], 10, message="draining")
    peer.send(protocol.Request(seq=2, cost=5))
    assert peer.expect(protocol.Reject).reason == "draining"
    assert not broker.drained  # a permit is still out
    peer.send(protocol.Settle(grant.permit, "ok", fake_keepa.envelope(consumed=5).to_wire()))
    wait_until(lambda: broker.drained, 10, message="the drain finished after the settle")


def test_draining_gives_up_after_its_timeout(
    serve: Callable[..., Broker], peers: Callable[..., Peer]
) -> None:
    broker = serve(drain_timeout_s=0.3)
    peer = peers(broker.address)
    peer.hello("w1")
    peer.send(protocol.Request(seq=1, cost=5))
    peer.expect(protocol.Grant)
    broker.begin_drain()
    wait_until(lambda: broker.drained, 10, message="the drain timed out")


def test_a_vanished_peer_does_not_break_the_loop(
    serve: Callable[..., Broker], peers: Callable[..., Peer]
) -> None:
    broker = serve()
    gone = peers(broker.address)
    gone.hello("gone")
    gone.send(protocol.Request(seq=1, cost=5))
    gone.expect(protocol.Grant)
    gone.close()  # heartbeats to it now fail with EHOSTUNREACH
    wait_until(lambda: status(broker.address)["send_failures"] > 0, 10)
    peer = peers(broker.address)
    peer.hello("w2")
    peer.send(protocol.Request(seq=1, cost=5))
    peer.expect(protocol.Grant)


def test_poll_timeout_is_the_nearest_timer(fake_keepa: FakeKeepa) -> None:
    """Stepping the loop by hand with a fake clock: the poll timeout follows the nearest
    timer (heartbeat due, then the projected refill), never more than a second."""
    clock = [1000.0]
    broker = Broker(
        broker_settings(broker__heartbeat_s=0.2), keepa_client=fake_keepa, clock=lambda: clock[0]
    )
    broker.initialize()
    try:
        now = clock[0]
        assert broker.poll_timeout_s(now) == 0.0  # a sync is due at start
        wait_until(lambda: (broker.loop_once(), broker.ledger.has_observation)[1], 10)
        broker.dispatch([b"peer", protocol.Hello("w", 1, "h", 1, "r", "v").encode()], now)
        assert broker.poll_timeout_s(now) == pytest.approx(0.2)  # its heartbeat is due
        clock[0] = now + 0.2
        broker.housekeeping(clock[0])  # heartbeat sent (to a peer that is not there)
        assert broker.send_failures >= 1
        assert 0 < broker.poll_timeout_s(clock[0]) <= 0.2 + 1e-6
        assert "permits granted 0" in broker.summary_line(clock[0])
        figures = broker.status(clock[0], per_worker=False)  # what metrics and summary read
        assert figures["workers"] == [] and figures["kills"] == []
        assert figures["workers_by_state"] == broker.status(clock[0])["workers_by_state"]
    finally:
        broker.shutdown()


def test_an_idle_broker_does_not_spin(
    serve: Callable[..., Broker], peers: Callable[..., Peer], fake_keepa: FakeKeepa
) -> None:
    """A request waits for a refill a minute away: the loop wakes for heartbeats (every
    0.2 s) and the like, not in a busy loop, and not for /token either."""
    fake_keepa.tokens_left = 0
    broker = serve(broker_settings(broker__short_wait_s=300.0))
    peer = peers(broker.address)
    peer.hello("w1")
    peer.send(protocol.Request(seq=1, cost=5, deadline_s=120))
    wait_until(lambda: status(broker.address)["permits"]["queued"] == 1, 10)
    before = status(broker.address)
    wait_until(
        lambda: status(broker.address)["uptime_s"] >= before["uptime_s"] + 1.0, 10, interval=0.25
    )
    after = status(broker.address)
    elapsed = after["uptime_s"] - before["uptime_s"]
    turns = after["loop_turns"] - before["loop_turns"]
    # Heartbeats (5/s), the STATUS requests themselves, a little slack; a spin is thousands.
    assert turns < 20 * elapsed + 20, (turns, elapsed)
    assert after["keepa"]["token_syncs"] == before["keepa"]["token_syncs"]


def test_a_long_wait_is_confirmed_with_keepa_once_per_refill_step(
    serve: Callable[..., Broker], peers: Callable[..., Peer], fake_keepa: FakeKeepa
) -> None:
    fake_keepa.tokens_left = 0  # the next refill is a minute away
    broker = serve(broker_settings(broker__short_wait_s=1.0))
    peer = peers(broker.address)
    peer.hello("w1")
    wait_until(lambda: status(broker.address)["keepa"]["token_syncs"] == 1, 10)
    peer.send(protocol.Request(seq=1, cost=5, deadline_s=120))
    # The head would wait ~60 s > short_wait_s: the broker asks Keepa before waiting...
    wait_until(lambda: status(broker.address)["keepa"]["token_syncs"] == 2, 10)
    # ...once: not again while the same refill step is awaited.
    before = status(broker.address)
    wait_until(
        lambda: status(broker.address)["uptime_s"] >= before["uptime_s"] + 1.0, 10, interval=0.25
    )
    assert status(broker.address)["keepa"]["token_syncs"] == 2
    assert fake_keepa.calls == 2


def test_a_gap_in_observations_brings_a_sync(
    serve: Callable[..., Broker], peers: Callable[..., Peer], fake_keepa: FakeKeepa
) -> None:
    broker = serve(broker_settings(broker__sync_gap_s=0.3))
    wait_until(
        lambda: status(broker.address)["keepa"]["token_syncs"] >= 3,
        10,
        message="syncs after each gap",
    )


def test_heartbeats_tell_idle_workers_what_the_cap_would_drop(
    serve: Callable[..., Broker], peers: Callable[..., Peer], fake_keepa: FakeKeepa
) -> None:
    fake_keepa.tokens_left = 1195  # cap 1200: the next refill of 20 would lose 15
    broker = serve()
    peer = peers(broker.address)
    peer.hello("w1")
    assert peer.expect(protocol.Heartbeat).spare == 15
    # A request waiting for tokens will use them: nothing is spare while one waits.
    peer.send(protocol.Request(seq=1, cost=MAX_COST))
    # (A heartbeat already on its way may predate the request: the next ones follow it.)
    seen = [peer.expect(protocol.Heartbeat).spare for _ in range(3)]
    assert seen[-1] == 0 and seen[1:] == [0, 0], seen
