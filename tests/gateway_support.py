"""Helpers of the gateway tests (``tests/gateway``; a module of ``tests/`` because a package
``tests/gateway`` would shadow the project's ``gateway``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fleet import Fleet

from common.config import Settings, load_settings
from gateway.clients import ClientStore
from gateway.server import Gateway


def fleet_settings(fleet: Fleet) -> Settings:
    """The settings a fleet process gets (its environment), loaded in this process."""
    old = dict(os.environ)
    os.environ.update(fleet.env)
    try:
        return load_settings(None)
    finally:
        os.environ.clear()
        os.environ.update(old)


def start_gateway(fleet: Fleet, tmp_path: Path, **kwargs: Any) -> Gateway:
    """A gateway in a thread of the test, on the fleet's broker and simulator."""
    kwargs.setdefault("listen", "127.0.0.1:0")
    store = kwargs.pop("store", None) or ClientStore(tmp_path / "clients.json")
    gw = Gateway(fleet_settings(fleet), store, **kwargs)
    gw.start_thread()
    return gw


def client_status(fleet: Fleet, name: str) -> dict[str, Any]:
    """The broker's status row of client ``name`` ({} when it has none)."""
    state = fleet.status() or {}
    found = [c for c in state.get("clients", []) if c["id"] == name]
    return found[0] if found else {}


def host_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (None when it has none): a
    UDP socket "connected" towards a few addresses sends nothing but picks the local one."""
    import contextlib
    import socket

    from gateway.clients import is_loopback

    for target in ("192.0.2.1", "10.255.255.255", "198.51.100.1"):
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((target, 9))
            addr = str(s.getsockname()[0])
            if not is_loopback(addr) and addr != "0.0.0.0":
                return addr
    return None


def free_port_on(host: str) -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start_gateway_process(
    fleet: Fleet,
    name: str,
    listen: str,
    clients_file: Path,
    env: dict[str, str] | None = None,
) -> str:
    """``keepa-fleet gateway`` as a process of the fleet; its URL once it answers HTTP."""
    import requests
    from support import fleet_command, wait_until

    fleet.processes.start(
        name,
        fleet_command("gateway", "--listen", listen, "--clients", str(clients_file)),
        env={**fleet.env, **(env or {})},
    )
    url = f"http://{listen}"
    wait_until(
        lambda: requests.get(f"{url}/token", timeout=2).status_code in (200, 401),
        30,
        interval=0.1,
        message=lambda: f"the gateway answering; log:\n{fleet.processes.log(name)}",
    )
    return url
