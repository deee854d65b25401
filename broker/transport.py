"""The broker's sockets: one ROUTER, the poller, the wake pipe, receive batching, sends.

No decisions here: ``Transport.poll`` waits for frames (or a wake-up, or a timeout),
``receive`` yields up to ``MAX_BATCH`` ROUTER messages already queued, ``send`` puts one
message on the wire without blocking (False when the peer's queue is full or the peer is
gone). The broker core (``broker/core.py``) decides what to send.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
from collections.abc import Iterator
from typing import Any, cast

import zmq

from common.curve import setup_server
from common.protocol import MAX_TRANSPORT_BYTES

log = logging.getLogger(__name__)

MAX_BATCH = 500  # messages dispatched per turn before housekeeping runs


def bind_address(address: str) -> str:
    """``tcp://HOST:0`` means any free port, as ZeroMQ spells it (``tcp://HOST:*``)."""
    if address.startswith("tcp://") and address.endswith(":0"):
        return address[:-1] + "*"
    return address


class Transport:
    """The ROUTER socket and what waits on it. Used by the thread running the loop, except
    ``wake`` (thread- and signal-safe)."""

    def __init__(self) -> None:
        self.ctx: zmq.Context[Any] | None = None
        self.router: zmq.Socket[Any] | None = None
        self.poller = zmq.Poller()
        self.address = ""
        self._auth: Any = None
        self._wake_r, self._wake_w = -1, -1

    def bind(self, address: str, curve_dir: str) -> str:
        """Bind the ROUTER (CURVE when ``curve_dir``) and the wake pipe; returns the bound
        endpoint (``tcp://HOST:0`` -> the actual port)."""
        self.ctx = zmq.Context()
        router = self.ctx.socket(zmq.ROUTER)
        router.linger = 0
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        router.setsockopt(zmq.MAXMSGSIZE, MAX_TRANSPORT_BYTES)
        if curve_dir:
            self._auth = setup_server(self.ctx, router, curve_dir)
        try:
            router.bind(bind_address(address))
        except zmq.ZMQError:
            router.close(linger=0)
            self.close_context()
            raise
        self.router = router
        endpoint = router.getsockopt(zmq.LAST_ENDPOINT)
        self.address = endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.poller.register(router, zmq.POLLIN)
        self.poller.register(self._wake_r, zmq.POLLIN)
        return self.address

    def register(self, socket: zmq.Socket[Any]) -> None:
        """Wait on another socket too (the /token thread's answers)."""
        self.poller.register(socket, zmq.POLLIN)

    def poll(self, timeout_s: float) -> dict[Any, int]:
        """Wait up to ``timeout_s``; the sockets (and the wake pipe) that have input. A
        wake-up is read off the pipe here and reported as the key ``"wake"``."""
        events = dict(self.poller.poll(math.ceil(timeout_s * 1000)))
        if self._wake_r in events:
            with contextlib.suppress(BlockingIOError, OSError):
                while os.read(self._wake_r, 4096):
                    pass
            del events[self._wake_r]
            events["wake"] = zmq.POLLIN
        return events

    def receive(self) -> Iterator[list[bytes]]:
        """The ROUTER messages already queued, at most MAX_BATCH."""
        router = self.router
        assert router is not None
        for n in range(MAX_BATCH):
            # (Asking EVENTS is cheaper than the zmq.Again raised by a recv on empty.)
            if n and not cast(int, router.get(zmq.EVENTS)) & zmq.POLLIN:
                return
            try:
                yield router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return

    def send(self, frames: list[bytes]) -> bool:
        """One message, without blocking; False when it was dropped (full or gone peer)."""
        assert self.router is not None
        try:
            self.router.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            return False  # the peer's queue is full: dropped
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                log.warning("send failed: %s", exc)
            return False  # the peer is gone
        return True

    def wake(self) -> None:
        """Interrupt the poll (thread- and signal-safe)."""
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"!")

    def close(self, *, term: bool = True) -> None:
        """Close the ROUTER and the pipe; ``term``: the context too (False when another
        thread may still hold one of its sockets)."""
        if self.router is not None:
            self.router.close(linger=0)
            self.router = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if term:
            self.close_context()

    def close_context(self) -> None:
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None
