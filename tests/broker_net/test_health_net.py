"""Issue 12 over real sockets: a settle answered 402 closes the permit book with a reason
naming the state, status and the metrics show it, a worker's heartbeat reports its storage,
and the broker re-checks /token by itself until the key works again."""

from __future__ import annotations

from collections.abc import Callable

from broker_net.net_support import FakeKeepa, broker_settings
from broker_net.test_metrics import scrape
from doubles import Peer
from support import unused_port, wait_until

from broker.server import Broker
from common import protocol
from common.errors import KeepaPaymentRequired
from common.status_client import fetch_status


def test_402_closes_the_book_names_the_state_and_reopens_by_itself(
    serve: Callable[..., Broker], peers: Callable[..., Peer], fake_keepa: FakeKeepa
) -> None:
    port = unused_port()
    broker = serve(broker_settings(broker__metrics_port=port, broker__recheck_max_s=0.5))
    peer = peers(broker.address)
    peer.hello("w1")
    peer.send(protocol.Request(seq=1, cost=12))
    grant = peer.expect(protocol.Grant)
    # The call under the permit gets a 402; from now on /token does too.
    real_token = fake_keepa.token

    def no_access() -> object:
        fake_keepa.calls += 1
        raise KeepaPaymentRequired("/token: HTTP 402", status=402)

    fake_keepa.token = no_access  # type: ignore[method-assign]
    # With its envelope (as Keepa sends one): the outcome is known, so only the key's state
    # makes the broker ask /token again.
    peer.send(protocol.Settle(grant.permit, "http_error", fake_keepa.envelope().to_wire(), 402))
    peer.send(protocol.Request(seq=2, cost=12))
    reject = peer.expect(protocol.Reject)
    assert (reject.seq, reject.reason) == (2, protocol.REJECT_KEEPA_NO_ACCESS)
    state = fetch_status(broker.address)
    assert state is not None
    (problem,) = state["health"]["problems"]
    assert problem["problem"] == "key_no_access" and "no access" in problem["says"]
    m = wait_until(
        lambda: (x := scrape(port)).get("keepa_fleet_problem{problem=key_no_access}") == 1 and x,
        15,
        message="the problem gauge",
    )
    assert m["keepa_fleet_problem{problem=storage_disk_full}"] == 0
    calls = fake_keepa.calls
    wait_until(lambda: fake_keepa.calls >= calls + 2, 15, message="/token re-checked")
    fake_keepa.token = real_token  # type: ignore[method-assign]  # the user paid
    wait_until(
        lambda: (fetch_status(broker.address) or {}).get("health", {}).get("ok"),
        15,
        message="health ok again",
    )
    peer.send(protocol.Request(seq=3, cost=12))
    assert peer.expect(protocol.Grant).seq == 3


def test_a_heartbeat_carries_the_storage_problem_into_status_and_metrics(
    serve: Callable[..., Broker], peers: Callable[..., Peer]
) -> None:
    port = unused_port()
    broker = serve(broker_settings(broker__metrics_port=port))
    peer = peers(broker.address)
    peer.hello("w1")
    storage = {"problem": "disk_full", "since_s": 1.5, "held": 2, "detail": "disk is full"}
    peer.send(protocol.Heartbeat(progress=1, storage=storage))

    def named() -> list[dict[str, object]]:
        return list((fetch_status(broker.address) or {}).get("health", {}).get("problems", []))

    (problem,) = wait_until(named, 15, message="the storage problem in status")
    assert problem["problem"] == "storage_disk_full" and problem["worker"] == "w1"
    wait_until(
        lambda: scrape(port).get("keepa_fleet_problem{problem=storage_disk_full}") == 1,
        15,
        message="the storage gauge",
    )
    peer.send(protocol.Heartbeat(progress=2))
    wait_until(lambda: not named(), 15, message="the problem gone with an empty report")
