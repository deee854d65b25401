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
