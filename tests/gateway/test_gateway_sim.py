"""The gateway over real sockets: the simulator and the broker as processes, the gateway in
a thread, the unmodified keepa package through it."""

from __future__ import annotations

import keepa
import pytest
import requests
from support import wait_until

from sim.catalog import Catalog


def test_keepa_package_through_the_gateway_is_a_client_with_its_spend(fleet_gw) -> None:
    from gateway.client import use_gateway

    fleet, gw = fleet_gw
    api = use_gateway(keepa.Keepa("unused-key", timeout=60), gw.url, client="notebook")
    asins = Catalog(seed=7).asins(0, 5)  # the fleet's simulator runs seed 7
    products = api.query(asins, stats=90, history=False, progress_bar=False)
    assert products
    state = wait_until(
        lambda: (s := fleet.status()) and s["clients"] and s["clients"][0]["settles"] and s,
        20,
        message="the client in status",
    )
    client = state["clients"][0]
    assert client["id"] == "gateway/notebook"
    assert client["tokens_spent"] > 0 and client["permits_held"] == 0
    assert state["tokens"]["spent_clients"] == client["tokens_spent"]
    assert state["tokens"]["unaccounted"] == 0
    sim = fleet.sim_state()
    assert sim["status_429"] == 0
    assert sim["tokens_consumed"] == state["tokens"]["spent"]


def test_token_is_answered_from_the_ledger_without_calling_keepa(fleet_gw) -> None:
    fleet, gw = fleet_gw
    before = fleet.sim_state()["token_calls"]
    r = requests.get(f"{gw.url}/token", params={"key": "whatever"}, timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert {"tokensLeft", "refillIn", "refillRate", "timestamp"} <= set(body)
    assert fleet.sim_state()["token_calls"] == before


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/nosuch", {}, 404),
        ("/product", {"domain": "1"}, 400),
        ("/product", {"domain": "1", "asin": "B000000001", "offers": "x"}, 400),
        ("/product", {"domain": "1", "asin": "B000000001", "mystery": "1"}, 400),
        ("/product", {"domain": "1", "asin": ",".join(f"B0{i:08d}" for i in range(101))}, 400),
    ],
)
def test_bad_input_is_refused_before_any_token_is_asked_for(fleet_gw, path, params, status):
    fleet, gw = fleet_gw
    before = fleet.sim_state()["tokens_consumed"]
    r = requests.get(gw.url + path, params={"key": "k", **params}, timeout=10)
    assert r.status_code == status
    assert r.json()["error"]["message"]
    assert fleet.sim_state()["tokens_consumed"] == before


def test_huge_body_is_413(fleet_gw) -> None:
    _, gw = fleet_gw
    r = requests.post(f"{gw.url}/deal", data=b"x" * (gw.max_body_bytes + 1), timeout=10)
    assert r.status_code == 413


@pytest.mark.parametrize("fleet_broker", [(50, None)], indirect=True)  # cap 60 x 50 = 3000
def test_a_call_that_can_never_be_granted_is_400_saying_why(fleet_gw) -> None:
    _, gw = fleet_gw
    asins = ",".join(f"B0{i:08d}" for i in range(1, 100))  # 99 x 60 > 3000
    r = requests.get(
        f"{gw.url}/product",
        params={"key": "k", "domain": "1", "asin": asins, "offers": "100"},
        timeout=20,
    )
    assert r.status_code == 400, r.text
    assert "never" in r.json()["error"]["message"]


# An account far below zero: nothing is granted for many refill periods.
@pytest.mark.parametrize("fleet_broker", [(1, -100000)], indirect=True)
def test_a_client_that_hangs_up_mid_wait_leaves_no_permit(fleet_gw) -> None:
    import socket

    fleet, gw = fleet_gw
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    sock.sendall(
        b"GET /product?key=k&domain=1&asin=B000000001 HTTP/1.1\r\nHost: x\r\n"
        b"X-Keepa-Fleet-Client: leaver\r\n\r\n"
    )

    def client() -> dict:
        s = fleet.status()
        found = [c for c in (s or {}).get("clients", []) if c["id"] == "gateway/leaver"]
        return found[0] if found else {}

    wait_until(lambda: client().get("waiting") == 1, 20, message="the request queued")
    sock.close()
    wait_until(
        lambda: (c := client()) and c["waiting"] == 0 and c["permits_held"] == 0,
        20,
        message="the request cancelled",
    )
    state = fleet.status()
    assert state is not None and state["permits"]["queued"] == 0
    assert state["tokens"]["in_flight"] == 0
    assert gw.counts.get("gone_waiting") == 1
