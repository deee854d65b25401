"""CURVE security for a broker on a non-loopback address (pyzmq's ``zmq.auth``).

Key layout, made by ``keepa-fleet keys --dir DIR``::

    DIR/broker.key            the broker's public key (give it to every client)
    DIR/broker.key_secret     the broker's secret key (broker only)
    DIR/authorized/NAME.key   public keys of the clients the broker accepts
    DIR/clients/NAME.key_secret   a client's key pair (copy to that client's DIR/client.key_secret)
    DIR/client.key_secret     the key pair this machine's workers and status tool use

On loopback no keys are needed; binding anything else without ``broker.curve_dir`` is refused.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from common.errors import ConfigError

log = logging.getLogger(__name__)

BROKER_NAME = "broker"
CLIENT_NAME = "client"


def is_loopback(address: str) -> bool:
    """True for tcp://127.x.x.x, tcp://localhost, tcp://[::1], ipc:// and inproc://."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    if not address.startswith("tcp://"):
        return False
    host = address[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or '*': not loopback


def require_curve_for(address: str, curve_dir: str) -> None:
    """Refuse a non-loopback broker address without keys."""
    if not is_loopback(address) and not curve_dir:
        raise ConfigError(
            "broker.curve_dir",
            f"{address} is not a loopback address: create keys with `keepa-fleet keys --dir "
            "DIR` and set broker.curve_dir (FLEET_BROKER_CURVE_DIR)",
        )


def create_keys(directory: Path, clients: list[str]) -> list[Path]:
    """Create the broker's pair, one pair per client name, and authorize those clients."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "authorized").mkdir(exist_ok=True)
    (directory / "clients").mkdir(exist_ok=True)
    made = []
    if not (directory / f"{BROKER_NAME}.key_secret").exists():
        zmq.auth.create_certificates(directory, BROKER_NAME)
        made.append(directory / f"{BROKER_NAME}.key_secret")
    for name in clients:
        public, secret = zmq.auth.create_certificates(directory / "clients", name)
        Path(public).replace(directory / "authorized" / f"{name}.key")
        made.append(Path(secret))
    return made


def setup_server(
    ctx: zmq.Context[Any], socket: zmq.Socket[Any], curve_dir: str
) -> ThreadAuthenticator:
    """Make ``socket`` a CURVE server that accepts only the authorized clients' keys."""
    root = Path(curve_dir)
    public, secret = zmq.auth.load_certificate(root / f"{BROKER_NAME}.key_secret")
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("broker.auth"))
    auth.start()
    auth.configure_curve(domain="*", location=str(root / "authorized"))
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True
    return auth


def setup_client(socket: zmq.Socket[Any], curve_dir: str) -> None:
    """Make ``socket`` a CURVE client with this machine's key pair and the broker's key."""
    root = Path(curve_dir)
    server_public, _ = zmq.auth.load_certificate(root / f"{BROKER_NAME}.key")
    key_file = root / f"{CLIENT_NAME}.key_secret"
    if not key_file.exists():
        raise ConfigError("broker.curve_dir", f"no client key pair at {key_file}")
    public, secret = zmq.auth.load_certificate(key_file)
    if secret is None:
        raise ConfigError("broker.curve_dir", f"{key_file} holds no secret key")
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = server_public
