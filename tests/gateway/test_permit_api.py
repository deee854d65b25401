"""The Python permit API (``gateway.client.connect(name).permit(...)``) against a real broker
and simulator: every permit is settled however its block ends, and none is left behind."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from fleet import Fleet
from gateway_support import client_status
from support import wait_until

from common.errors import ConfigError, PermitRejected, PermitTimeout
from gateway.client import Fleet as FleetClient
from gateway.client import connect
from gateway.clients import MAX_CLIENT_PRIORITY, ClientStore
from sim.catalog import Catalog
from workers.stages import PRIORITY_COMMIT

ASINS = Catalog(seed=7).asins(0, 3)  # the fleet's simulator runs seed 7


class Boom(Exception):
    pass


@pytest.fixture
def script(fleet_broker: Fleet, fleet_env) -> FleetClient:
    fleet_env(fleet_broker)
    client = connect("script", broker=fleet_broker.broker_address)
    yield client
    client.close()


def keepa_get(fleet: Fleet, **params: Any) -> requests.Response:
    return requests.get(
        f"{fleet.sim_url}/product",
        params={"key": fleet.key, "domain": 1, "asin": ",".join(ASINS), **params},
        timeout=10,
    )


def settled_once(fleet: Fleet) -> dict[str, Any]:
    """The client's row once its one permit is settled (nothing held, nothing in flight)."""

    def done() -> dict[str, Any] | None:
        state = fleet.status()
        row = client_status(fleet, "script")
        if not state or not row or row["settles"] < 1 or row["permits_held"]:
            return None
        if state["tokens"]["in_flight"] or state["permits"]["queued"]:
            return None
        return row

    return wait_until(done, 20, message="the permit settled")


def test_a_settled_permit_counts_what_keepa_charged(fleet_broker, script) -> None:
    with script.permit(cost=5 * len(ASINS), priority=1) as p:
        assert p.cost == 5 * len(ASINS)
        resp = keepa_get(fleet_broker)
        p.settle(resp)
    row = settled_once(fleet_broker)
    consumed = fleet_broker.sim_state()["tokens_consumed"]
    assert consumed > 0
    assert row["tokens_spent"] == consumed and row["granted"] == 1
    tokens = fleet_broker.status()["tokens"]
    assert tokens["spent_clients"] == consumed and tokens["unaccounted"] == 0


def test_an_exception_in_the_block_settles_the_permit_and_propagates(fleet_broker, script):
    with pytest.raises(Boom), script.permit(cost=5 * len(ASINS)):
        keepa_get(fleet_broker)  # Keepa charged, then the user's code failed
        raise Boom("after the call")
    row = settled_once(fleet_broker)
    assert row["settles"] == 1 and row["permits_held"] == 0


def test_a_block_left_without_settle_is_settled_once(fleet_broker, script) -> None:
    with script.permit(cost=2) as p:
        pass
    assert p.settled
    settled_once(fleet_broker)
    p.settle(None)  # a second settle is ignored: still one
    row = settled_once(fleet_broker)
    assert row["settles"] == 1


def test_a_keyboard_interrupt_in_the_block_settles_too(fleet_broker, script) -> None:
    with pytest.raises(KeyboardInterrupt), script.permit(cost=2) as p:
        raise KeyboardInterrupt
    assert p.settled
    settled_once(fleet_broker)


@pytest.mark.parametrize("fleet_broker", [(1, -100000)], indirect=True)
def test_no_grant_in_time_is_permit_timeout_and_leaves_nothing_queued(fleet_broker, script):
    with pytest.raises(PermitTimeout), script.permit(cost=1, wait_s=1.0):
        pytest.fail("the block must not run without a grant")
    wait_until(
        lambda: (
            (s := fleet_broker.status())
            and s["permits"]["queued"] == 0
            and s["tokens"]["in_flight"] == 0
            and client_status(fleet_broker, "script").get("waiting") == 0
        ),
        20,
        message="the request cancelled at the broker",
    )


@pytest.mark.parametrize("fleet_broker", [(50, None)], indirect=True)  # cap 60 x 50 = 3000
def test_a_permit_the_account_can_never_grant_is_rejected(fleet_broker, script) -> None:
    too_much = fleet_broker.status()["tokens"]["max_cost"] + 1  # the cap + broker.max_deficit
    with pytest.raises(PermitRejected) as info, script.permit(cost=too_much):
        pytest.fail("the block must not run")
    assert info.value.reason == "too_large"


def test_no_client_outranks_the_workers_commits(fleet_broker, script, tmp_path) -> None:
    assert MAX_CLIENT_PRIORITY < PRIORITY_COMMIT
    with pytest.raises(ConfigError), script.permit(cost=1, priority=PRIORITY_COMMIT):
        pytest.fail("the block must not run")
    with pytest.raises(ConfigError):
        connect("greedy", broker=fleet_broker.broker_address, priority=PRIORITY_COMMIT)
    with pytest.raises(ConfigError):
        ClientStore(tmp_path / "clients.json").add("greedy", priority=PRIORITY_COMMIT)
    state = fleet_broker.status()
    assert state["permits"]["granted"] == 0 and state["permits"]["queued"] == 0
