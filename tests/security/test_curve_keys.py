"""CURVE: keys made by `keepa-fleet keys`; an authorized client talks to a CURVE server, a
client without keys or with unauthorized keys gets nothing; non-loopback needs keys."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import zmq
import zmq.auth
from support import bind_any_port, fleet_command

from common.curve import is_loopback, require_curve_for, setup_client, setup_server
from common.errors import ConfigError


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    out = subprocess.run(
        fleet_command("keys", "--dir", str(d)), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return d


def _roundtrip(keys: Path, client_setup: str) -> bytes | None:
    ctx = zmq.Context()
    auth = None
    try:
        server = ctx.socket(zmq.ROUTER)
        server.linger = 0
        auth = setup_server(ctx, server, str(keys))
        addr = bind_any_port(server)
        client = ctx.socket(zmq.DEALER)
        client.linger = 0
        if client_setup == "authorized":
            setup_client(client, str(keys))
        elif client_setup == "stranger":
            other = keys.parent / "other"
            other.mkdir()
            zmq.auth.create_certificates(other, "x")
            pub, sec = zmq.auth.load_certificate(other / "x.key_secret")
            srv, _ = zmq.auth.load_certificate(keys / "broker.key")
            client.curve_secretkey, client.curve_publickey = sec, pub  # type: ignore[assignment]
            client.curve_serverkey = srv
        client.connect(addr)
        client.send(b"hello")
        if server.poll(1500 if client_setup != "authorized" else 10000):
            return server.recv_multipart()[-1]
        return None
    finally:
        if auth is not None:
            auth.stop()
        ctx.destroy(linger=0)


def test_authorized_client_is_heard(keys: Path) -> None:
    assert _roundtrip(keys, "authorized") == b"hello"


@pytest.mark.parametrize("who", ["plain", "stranger"])
def test_client_without_the_key_gets_nothing_through(keys: Path, who: str) -> None:
    assert _roundtrip(keys, who) is None


def test_loopback_detection_and_requirement() -> None:
    assert is_loopback("tcp://127.0.0.1:5555")
    assert is_loopback("tcp://localhost:1")
    assert is_loopback("tcp://[::1]:1")
    assert is_loopback("ipc:///tmp/x")
    assert not is_loopback("tcp://0.0.0.0:5555")
    assert not is_loopback("tcp://*:5555")
    assert not is_loopback("tcp://10.1.2.3:5555")
    require_curve_for("tcp://127.0.0.1:5555", "")
    require_curve_for("tcp://0.0.0.0:5555", "/some/dir")
    with pytest.raises(ConfigError, match=r"broker\.curve_dir"):
        require_curve_for("tcp://0.0.0.0:5555", "")
