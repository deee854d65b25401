"""Bad or awkward clients of the gateway (a thread of the test) on a real simulator and
broker: gzip both ways, slow senders, a client's own time limit, hanging up mid-call."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import requests
from gateway_support import client_status, start_gateway
from support import wait_until

from sim.catalog import Catalog

ASINS = Catalog(seed=7).asins(0, 3)
PRODUCT = {"key": "k" * 10, "domain": "1", "asin": ",".join(ASINS)}


def test_gzip_asked_for_is_answered_gzip_and_plain_otherwise(fleet_gw) -> None:
    _, gw = fleet_gw
    zipped = requests.get(
        f"{gw.url}/product", params=PRODUCT, headers={"Accept-Encoding": "gzip"}, timeout=20
    )
    assert zipped.status_code == 200
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert len(zipped.json()["products"]) == len(ASINS)
    plain = requests.get(
        f"{gw.url}/product", params=PRODUCT, headers={"Accept-Encoding": "identity"}, timeout=20
    )
    assert plain.status_code == 200
    assert "Content-Encoding" not in plain.headers
    assert len(plain.json()["products"]) == len(ASINS)


def _slow(port: int, first_bytes: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(first_bytes)
    return sock


def closed_by_peer(sock: socket.socket, deadline: float) -> bool:
    """True once the peer closes the connection (EOF) before ``deadline``."""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            return False
    return False


@pytest.mark.parametrize(
    "first_bytes",
    [
        b"GET /product?domain=1&asin=B000000001 HTTP/1.1\r\nHost: x\r\n",  # headers unfinished
        b'POST /deal HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"page":',  # short body
    ],
    ids=["headers", "body"],
)
def test_a_slow_client_blocks_nobody_and_is_cut_off(fleet_broker, tmp_path, first_bytes):
    gw = start_gateway(fleet_broker, tmp_path, client_timeout_s=2.0)
    try:
        slow = [_slow(gw.port, first_bytes) for _ in range(3)]
        t0 = time.monotonic()
        r = requests.get(f"{gw.url}/product", params=PRODUCT, timeout=20)
        assert r.status_code == 200  # served while three slow clients hold connections
        for sock in slow:  # each is closed by the gateway once its client timeout passes
            assert closed_by_peer(sock, deadline=t0 + 20)
            sock.close()
        state = fleet_broker.status()
        assert state["permits"]["queued"] == 0 and state["tokens"]["in_flight"] == 0
    finally:
        gw.close()


# An account far below zero: nothing is granted for many refill periods.
@pytest.mark.parametrize("fleet_broker", [(1, -100000)], indirect=True)
def test_no_grant_within_the_clients_limit_is_429_with_the_envelope(fleet_gw) -> None:
    fleet, gw = fleet_gw
    r = requests.get(
        f"{gw.url}/product",
        params=PRODUCT,
        headers={"X-Keepa-Fleet-Wait-S": "1", "X-Keepa-Fleet-Client": "patient"},
        timeout=30,
    )
    assert r.status_code == 429
    body = r.json()
    assert body["tokensLeft"] <= 0
    assert body["refillRate"] == 1 and body["refillIn"] >= 0 and body["timestamp"] > 0
    wait_until(
        lambda: (
            (s := fleet.status())
            and s["permits"]["queued"] == 0
            and client_status(fleet, "gateway/patient").get("waiting") == 0
        ),
        20,
        message="the request cancelled at the broker",
    )
    assert fleet.sim_state()["product_calls"] == 0  # nothing was sent to Keepa
    bad = requests.get(
        f"{gw.url}/product", params=PRODUCT, headers={"X-Keepa-Fleet-Wait-S": "soon"}, timeout=10
    )
    assert bad.status_code == 400 and "Wait-S" in bad.json()["error"]["message"]


def test_a_client_hanging_up_during_the_keepa_call_leaves_its_permit_settled(
    fleet_gw, tmp_path: Path
) -> None:
    fleet, gw = fleet_gw
    fleet.sim_admin("fault", kind="delay", delay_s=3, path="/product")
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    query = "&".join(f"{k}={v}" for k, v in PRODUCT.items())
    head = f"GET /product?{query} HTTP/1.1\r\nHost: x\r\nX-Keepa-Fleet-Client: quitter\r\n\r\n"
    sock.sendall(head.encode())
    wait_until(
        lambda: client_status(fleet, "gateway/quitter").get("permits_held") == 1,
        20,
        message="the permit granted and the call under way",
    )
    sock.close()  # mid-call: Keepa has the request
    row = wait_until(
        lambda: (
            (c := client_status(fleet, "gateway/quitter"))
            and c["settles"] == 1
            and c["permits_held"] == 0
            and c
        ),
        30,
        message="the permit settled",
    )
    state = fleet.status()
    assert state["tokens"]["in_flight"] == 0 and state["tokens"]["unaccounted"] == 0
    assert row["tokens_spent"] == fleet.sim_state()["tokens_consumed"] > 0


def test_a_huge_request_line_or_body_costs_nothing(fleet_gw) -> None:
    fleet, gw = fleet_gw
    long_url = requests.get(f"{gw.url}/product?asin={'B' * 70_000}&domain=1", timeout=10)
    assert long_url.status_code == 414 and long_url.json()["error"]["message"]
    bad_line = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    bad_line.sendall(b"NOT-HTTP\r\n\r\n")
    assert b'"error"' in bad_line.recv(4096)
    bad_line.close()
    big = requests.post(f"{gw.url}/deal", data=b"{" * (gw.max_body_bytes + 1), timeout=10)
    assert big.status_code == 413 and "body over" in big.json()["error"]["message"]
    state = fleet.sim_state()
    assert state["product_calls"] == 0 and state["deal_calls"] == 0
    assert fleet.status()["permits"]["granted"] == 0
