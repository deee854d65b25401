"""CURVE end to end with real processes: ``keepa-fleet keys`` makes the key pairs; a broker
with ``broker.curve_dir`` accepts the worker and the status tool that use the authorized
client key, and gives nothing to a worker or status tool without keys or with a key pair it
has not authorized (they never register, never get an answer). Binding a non-loopback
address without keys is refused before anything is bound.

The broker binds 127.0.0.1 here (CURVE works on any address; the test sends nothing off
the machine). Switch CURVE off on the broker and the keyless worker registers: this test
fails."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq.auth
from support import (
    BROKER_ADDRESS_LOGGED,
    Processes,
    fleet_command,
    logged,
    refused_port,
    wait_until,
)

from broker.status_cli import fetch_status
from common.config import load_settings
from common.curve import CLIENT_NAME, is_loopback

pytestmark = pytest.mark.e2e

ENV = {
    "FLEET_BROKER_HEARTBEAT_S": "0.2",
    "FLEET_BROKER_LIVENESS": "5",
    "FLEET_WORKER_RECONNECT_MAX_S": "0.5",
    # KEEPA_BASE_URL: a refused port (fixture keepa_down): registration is what is tested.
    "FLEET_LOG_LEVEL": "INFO",
    "FLEET_CONFIG": "",
}


@pytest.fixture(autouse=True)
def keepa_down(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with refused_port() as port:
        monkeypatch.setitem(ENV, "KEEPA_BASE_URL", f"http://127.0.0.1:{port}")
        yield


def make_keys(tmp_path: Path) -> Path:
    keys = tmp_path / "keys"
    out = subprocess.run(
        fleet_command("keys", "--dir", str(keys)), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert (keys / f"{CLIENT_NAME}.key_secret").exists()
    return keys


def stranger_keys(tmp_path: Path, keys: Path) -> Path:
    """A directory laid out like the real one (the broker's public key), but with a client
    key pair the broker never authorized."""
    other = tmp_path / "stranger"
    (other / "made").mkdir(parents=True)
    zmq.auth.create_certificates(other / "made", CLIENT_NAME)
    shutil.copyfile(
        other / "made" / f"{CLIENT_NAME}.key_secret", other / f"{CLIENT_NAME}.key_secret"
    )
    shutil.copyfile(keys / "broker.key", other / "broker.key")
    return other


def status_cli(address: str, curve_dir: str) -> subprocess.CompletedProcess[str]:
    env = {"FLEET_BROKER_CURVE_DIR": curve_dir, "FLEET_CONFIG": ""}
    return subprocess.run(
        fleet_command("status", "--broker", address, "--json", "--timeout", "2"),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_only_clients_with_an_authorized_key_get_anything(
    tmp_path: Path, processes: Processes
) -> None:
    keys = make_keys(tmp_path)
    stranger = stranger_keys(tmp_path, keys)
    broker_env = {**ENV, "FLEET_BROKER_CURVE_DIR": str(keys)}
    proc = processes.start(
        "broker", fleet_command("broker", "--bind", "tcp://127.0.0.1:0"), env=broker_env
    )
    address = logged(processes, "broker", proc, BROKER_ADDRESS_LOGGED)
    wait_until(
        lambda: fetch_status(address, timeout=1, curve_dir=str(keys)),
        30,
        interval=0.1,
        message=lambda: f"the CURVE broker answering; log:\n{processes.log('broker')}",
    )

    def worker(name: str, curve_dir: str) -> None:
        argv = fleet_command(
            "worker", "--id", name, "--broker", address, "--db", str(tmp_path / f"{name}.db")
        )
        processes.start(name, argv, env={**ENV, "FLEET_BROKER_CURVE_DIR": curve_dir})

    worker("keyed", str(keys))
    worker("keyless", "")
    worker("stranger", str(stranger))

    def registered() -> set[str]:
        state = fetch_status(address, timeout=2, curve_dir=str(keys)) or {}
        return {w["id"] for w in state.get("workers", []) if w["state"] in ("alive", "waiting")}

    wait_until(lambda: "keyed" in registered(), 30, interval=0.1, message="the keyed worker")

    # The others have been trying all along: wait until each has either been turned away
    # twice (no WELCOME, reconnecting) or got in; then only the keyed one may be known.
    def settled(name: str) -> bool:
        log = processes.log(name)
        return log.count("no WELCOME") >= 2 or "connected to broker" in log

    wait_until(
        lambda: settled("keyless") and settled("stranger"),
        30,
        interval=0.1,
        message=lambda: (
            "the keyless and stranger workers retrying; logs:\n"
            + processes.log("keyless")[-1500:]
            + processes.log("stranger")[-1500:]
        ),
    )
    assert registered() == {"keyed"}
    for name in ("keyless", "stranger"):
        assert "connected to broker" not in processes.log(name), processes.log(name)
    assert "connected to broker" in processes.log("keyed")

    # The status tool: the same rule.
    assert fetch_status(address, timeout=1) is None
    assert fetch_status(address, timeout=1, curve_dir=str(stranger)) is None
    with_keys = status_cli(address, str(keys))
    assert with_keys.returncode == 0, with_keys.stderr
    assert '"broker_id"' in with_keys.stdout
    without = status_cli(address, "")
    assert without.returncode == 2 and without.stdout == "", without


def test_the_broker_binds_loopback_by_default() -> None:
    assert is_loopback(load_settings(env={}).broker.address)


def test_non_loopback_bind_without_keys_is_refused(tmp_path: Path) -> None:
    out = subprocess.run(
        fleet_command("broker", "--bind", "tcp://0.0.0.0:0"),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **ENV, "FLEET_BROKER_CURVE_DIR": ""},
    )
    assert out.returncode == 78, out
    assert "broker.curve_dir" in out.stderr and "keepa-fleet keys" in out.stderr
