"""Fixtures of the broker's socket tests: a broker serving in a thread on a random port
(``serve``), a fake Keepa ``/token`` (``fake_keepa``) and protocol peers (``peers``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq
from broker_net.net_support import FakeKeepa, broker_settings, status
from doubles import Peer
from support import wait_until

from broker.server import Broker, running_broker
from common.config import Settings


@pytest.fixture
def zctx() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


@pytest.fixture
def fake_keepa() -> FakeKeepa:
    return FakeKeepa()


@pytest.fixture
def serve(fake_keepa: FakeKeepa) -> Iterator[Callable[..., Broker]]:
    """``serve(settings=None, synced=True, **broker_kwargs)`` starts a broker in a thread
    (with ``synced``, returns once its first /token answer is in); all stop after."""
    stack = contextlib.ExitStack()

    def start(settings: Settings | None = None, *, synced: bool = True, **kwargs: Any) -> Broker:
        kwargs.setdefault("keepa_client", fake_keepa)
        broker = stack.enter_context(running_broker(settings or broker_settings(), **kwargs))
        if synced:  # the first /token answer is in: WELCOME and heartbeats know max_cost
            wait_until(
                lambda: status(broker.address)["tokens"]["max_cost"] > 0,
                10,
                message="the broker's first /token answer",
            )
        return broker

    with stack:
        yield start


@pytest.fixture
def peers(zctx: zmq.Context[Any]) -> Iterator[Callable[..., Peer]]:
    made: list[Peer] = []

    def make(address: str, identity: bytes | None = None) -> Peer:
        peer = Peer(zctx, address, identity)
        made.append(peer)
        return peer

    try:
        yield make
    finally:
        for p in made:
            p.close()
