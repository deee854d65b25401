"""Fixtures of the worker-runtime tests: a fake broker and a connected link."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from doubles import FakeBroker
from support import wait_until
from workers_runtime.wr_support import make_client

from common import protocol
from workers.link import BrokerLink
from workers.permit_client import BrokerPermitClient


@pytest.fixture
def broker() -> Iterator[FakeBroker]:
    b = FakeBroker()
    try:
        yield b
    finally:
        b.close()


@dataclass
class Connected:
    broker: FakeBroker
    link: BrokerLink
    client: BrokerPermitClient
    identity: bytes
    hello: protocol.Hello


@pytest.fixture
def connected(broker: FakeBroker) -> Iterator[Connected]:
    """A started link that said HELLO and got WELCOME (heartbeat 0.1 s, liveness 100)."""
    link, client, _ = make_client(broker.address)
    link.start()
    try:
        identity, hello = broker.handshake(max_cost=300)
        wait_until(lambda: link.ready, 10, message="link ready")
        yield Connected(broker, link, client, identity, hello)
    finally:
        link.close(None, timeout_s=5)
