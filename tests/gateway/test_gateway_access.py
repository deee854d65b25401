"""Who may use the gateway, and the real key never leaving it: ``keepa-fleet gateway`` as a
real process beside a real simulator and broker.

The non-loopback case is not emulated: the gateway listens on this machine's own
non-loopback address (found with ``host_address``) and the test connects to it, so the
gateway sees a non-loopback peer. A machine without such an address skips that test; the
rule itself is also checked on ``ClientStore.authenticate`` with a non-loopback peer."""

from __future__ import annotations

import argparse
import json
import stat
import subprocess
from pathlib import Path

import pytest
import requests
from fleet import Fleet
from gateway_support import (
    client_status,
    free_port_on,
    host_address,
    start_gateway_process,
)
from support import fleet_command, unused_port, wait_until

from gateway import cli as gateway_cli
from gateway.clients import ClientStore, Unauthorized
from sim.catalog import Catalog

REAL_KEY = "REALkey-h14-never-leaves-0123456789"
CLIENT_KEY = "clientsOwnKey-0123456789"
ASINS = Catalog(seed=7).asins(0, 2)


def add_client(clients: Path, name: str) -> str:
    out = subprocess.run(
        fleet_command("gateway", "--add-client", name, "--clients", str(clients)),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = out.stdout.split()
    assert len(lines) == 1, out.stdout
    return lines[0]


@pytest.fixture
def fleet(processes, tmp_path: Path) -> Fleet:
    f = Fleet(processes, tmp_path, refill_rate=200, refill_period_s=0.5, key=REAL_KEY)
    f.start_sim()
    f.start_broker()
    return f


def test_loopback_is_the_default_listen_address(monkeypatch) -> None:
    monkeypatch.delenv("FLEET_GATEWAY_LISTEN", raising=False)
    parser = argparse.ArgumentParser()
    gateway_cli.add_arguments(parser)
    assert parser.parse_args([]).listen == "127.0.0.1:8788"


def test_a_non_loopback_address_without_clients_is_refused(tmp_path: Path) -> None:
    out = subprocess.run(
        fleet_command(
            "gateway", "--listen", "192.0.2.77:8788", "--clients", str(tmp_path / "none.json")
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 78, out.stderr
    assert "--add-client" in out.stderr


def test_add_client_prints_a_token_kept_only_as_its_hash(tmp_path: Path) -> None:
    clients = tmp_path / "clients.json"
    token = add_client(clients, "notebook")
    assert len(token) >= 40
    text = clients.read_text()
    assert token not in text
    assert stat.S_IMODE(clients.stat().st_mode) == 0o600
    assert json.loads(text)["clients"]["notebook"]["token_sha256"]
    store = ClientStore(clients)
    assert store.authenticate("192.0.2.10", f"Bearer {token}", "").name == "notebook"
    for auth, header in (("", ""), ("", "notebook"), ("Bearer wrong", ""), (token, "")):
        with pytest.raises(Unauthorized):
            store.authenticate("192.0.2.10", auth, header)
    # A second --add-client gives a new token; the old one stops working.
    new = add_client(clients, "notebook")
    with pytest.raises(Unauthorized):
        ClientStore(clients).authenticate("127.0.0.1", f"Bearer {token}", "")
    assert ClientStore(clients).authenticate("127.0.0.1", f"Bearer {new}", "").registered


def test_on_a_non_loopback_address_each_client_needs_its_token(fleet, tmp_path: Path) -> None:
    host = host_address()
    if host is None:
        pytest.skip("this machine has no non-loopback IPv4 address to listen on")
    clients = tmp_path / "clients.json"
    token = add_client(clients, "notebook")
    url = start_gateway_process(fleet, "gateway", f"{host}:{free_port_on(host)}", clients)
    params = {"key": CLIENT_KEY, "domain": "1", "asin": ",".join(ASINS)}
    refused = [
        requests.get(f"{url}/product", params=params, timeout=20),
        requests.get(f"{url}/product", params=params, headers={"X-Keepa-Fleet-Client": "x"}),
        requests.get(f"{url}/token", headers={"Authorization": "Bearer not-a-token"}),
    ]
    assert [r.status_code for r in refused] == [401, 401, 401]
    assert all(r.json()["error"]["message"] for r in refused)
    assert fleet.sim_state()["product_calls"] == 0
    ok = requests.get(
        f"{url}/product", params=params, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["products"]) == len(ASINS)
    row = wait_until(
        lambda: (c := client_status(fleet, "gateway/notebook")) and c["settles"] and c,
        20,
        message="the client in status",
    )
    assert row["tokens_spent"] == fleet.sim_state()["tokens_consumed"] > 0


def test_the_clients_key_is_ignored_and_the_real_key_never_leaves(fleet, tmp_path) -> None:
    url = start_gateway_process(
        fleet,
        "gateway",
        f"127.0.0.1:{unused_port()}",
        tmp_path / "clients.json",
        env={"FLEET_LOG_LEVEL": "DEBUG"},
    )
    product = {"key": CLIENT_KEY, "domain": "1", "asin": ",".join(ASINS)}
    answers = [
        requests.get(f"{url}/token", params={"key": CLIENT_KEY}, timeout=10),
        requests.get(f"{url}/product", params=product, timeout=30),
        requests.get(f"{url}/product", params={**product, "offers": "20"}, timeout=30),
        requests.get(f"{url}/product", params={**product, "mystery": "1"}, timeout=10),
        requests.get(f"{url}/nosuch", params={"key": CLIENT_KEY}, timeout=10),
        requests.get(f"{url}/product", params=product, headers={"Authorization": "Bearer x"}),
    ]
    fleet.sim_admin("fault", kind="500", path="/product")
    answers.append(requests.get(f"{url}/product", params=product, timeout=30))
    assert [r.status_code for r in answers] == [200, 200, 200, 400, 404, 401, 500]
    real = fleet.sim_state()  # the account of the real key paid for every call
    assert real["product_calls"] == 3
    theirs = requests.get(
        f"{fleet.sim_url}/_sim/state", params={"key": CLIENT_KEY}, timeout=5
    ).json()
    assert theirs["product_calls"] == 0 and theirs["tokens_consumed"] == 0
    for r in answers:
        assert REAL_KEY not in r.text
        assert all(REAL_KEY not in f"{k}: {v}" for k, v in r.headers.items())
        assert REAL_KEY not in r.url
    wait_until(
        lambda: client_status(fleet, "gateway/local").get("settles") == 3,
        20,
        message="three settles",
    )
    log = fleet.processes.log("gateway")
    assert "client local: /product -> 200" in log  # the log is at DEBUG and does say things
    assert REAL_KEY not in log
