"""Fixtures of the gateway tests: a simulator and a broker as processes (``tests/fleet.py``),
the gateway in a thread of the test (helpers in ``tests/gateway_support.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet import Fleet
from gateway_support import start_gateway

from gateway.server import Gateway


@pytest.fixture
def fleet_env(monkeypatch: pytest.MonkeyPatch):
    """Put a fleet's environment into this process (for ``gateway.client.connect``)."""

    def apply(fleet: Fleet) -> None:
        for k, v in fleet.env.items():
            monkeypatch.setenv(k, v)

    return apply


@pytest.fixture
def fleet_broker(request, processes, tmp_path: Path) -> Iterator[Fleet]:
    """The simulator and the broker; ``request.param`` = (refill_rate, starting tokens)."""
    rate, tokens = getattr(request, "param", (200, None))
    fleet = Fleet(processes, tmp_path, refill_rate=rate, refill_period_s=0.5, tokens=tokens)
    fleet.start_sim()
    fleet.start_broker()
    yield fleet


@pytest.fixture
def fleet_gw(fleet_broker: Fleet, tmp_path: Path) -> Iterator[tuple[Fleet, Gateway]]:
    gw = start_gateway(fleet_broker, tmp_path)
    try:
        yield fleet_broker, gw
    finally:
        gw.close()
