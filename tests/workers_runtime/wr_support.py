"""Helpers of the worker-runtime tests: a fake broker (a ROUTER the test drives, every
receive with a deadline), fake Keepa responses and a link + permit client pair."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import zmq
from support import wait_until

from common import protocol
from common.keepa import KeepaResponse, TokenEnvelope
from workers.link import BrokerLink
from workers.permit_client import BrokerPermitClient

M = TypeVar("M", bound=protocol.Message)

RECV_TIMEOUT_S = 10.0


class FakeBroker:
    """A ROUTER on 127.0.0.1 that records what arrives; the test sends the replies."""

    def __init__(self, port: int | None = None) -> None:
        """On any free port (bound as port 0, the port read back), or on ``port`` again (a
        broker restarted where its workers look: retried while the old socket lets go)."""
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if port is None:
            self.sock.bind("tcp://127.0.0.1:*")
            endpoint = self.sock.getsockopt(zmq.LAST_ENDPOINT)
            self.address = endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)
            self.port = int(self.address.rsplit(":", 1)[1])
        else:
            self.port = port
            self.address = f"tcp://127.0.0.1:{self.port}"
            wait_until(self._bind, 10, interval=0.05, message=f"binding {self.address}")
        self.seen: list[tuple[bytes, protocol.Message]] = []

    def _bind(self) -> bool:
        try:
            self.sock.bind(self.address)
        except zmq.ZMQError:
            return False
        return True

    def recv(self, timeout: float = RECV_TIMEOUT_S) -> tuple[bytes, protocol.Message]:
        if not self.sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise AssertionError(f"nothing arrived at the fake broker within {timeout} s")
        identity, payload = self.sock.recv_multipart(zmq.NOBLOCK)
        msg = protocol.decode(payload)
        self.seen.append((identity, msg))
        return identity, msg

    def expect(
        self,
        cls: type[M],
        timeout: float = RECV_TIMEOUT_S,
        skip: tuple[type[protocol.Message], ...] = (protocol.Heartbeat,),
    ) -> tuple[bytes, M]:
        """The next message of type ``cls``; ``skip`` types are passed over, others fail."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {cls.TYPE} within {timeout} s; seen {self.types()}")
            identity, msg = self.recv(remaining)
            if isinstance(msg, cls):
                return identity, msg
            if not isinstance(msg, skip):
                raise AssertionError(f"expected {cls.TYPE}, got {msg!r}")

    def drain(self) -> list[protocol.Message]:
        """What has arrived so far, without waiting."""
        out = []
        while self.sock.poll(0, zmq.POLLIN):
            out.append(self.recv(0)[1])
        return out

    def types(self) -> list[str]:
        return [m.TYPE for _, m in self.seen]

    def send(self, identity: bytes, msg: protocol.Message) -> None:
        self.sock.send_multipart([identity, msg.encode()])

    def handshake(
        self,
        *,
        heartbeat_s: float = 0.1,
        liveness: int = 100,
        max_cost: int = 0,
        timeout: float = RECV_TIMEOUT_S,
    ) -> tuple[bytes, protocol.Hello]:
        """Wait for HELLO, answer WELCOME."""
        identity, hello = self.expect(protocol.Hello, timeout)
        self.send(
            identity,
            protocol.Welcome(
                broker_id="fake",
                heartbeat_s=heartbeat_s,
                liveness=liveness,
                lease_ttl_s=30.0,
                max_cost=max_cost,
            ),
        )
        return identity, hello

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def envelope(consumed: int = 5, tokens_left: int = 100) -> TokenEnvelope:
    return TokenEnvelope(
        timestamp_ms=1_700_000_000_000,
        tokens_left=tokens_left,
        refill_in_ms=30_000,
        refill_rate=20,
        tokens_consumed=consumed,
        processing_time_ms=12,
    )


def response(consumed: int = 5) -> KeepaResponse:
    return KeepaResponse(status=200, envelope=envelope(consumed), payload={}, elapsed_s=0.01)


def make_client(
    address: str,
    *,
    worker_id: str = "w-test",
    reconnect_max_s: float = 0.5,
    grant_wait_s: float = 10.0,
    on_kill: Callable[[str], None] | None = None,
) -> tuple[BrokerLink, BrokerPermitClient, threading.Event]:
    link = BrokerLink(
        address,
        worker_id=worker_id,
        role="all",
        heartbeat_s=0.1,
        liveness=5,
        reconnect_max_s=reconnect_max_s,
        on_kill=on_kill,
    )
    stop = threading.Event()
    client = BrokerPermitClient(link, stop=stop, grant_wait_s=grant_wait_s)
    return link, client, stop


class CallThread:
    """``client.call(...)`` in a thread (the work loop), with its outcome."""

    def __init__(self, target: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._target = target
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self._target()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def join(self, timeout: float = RECV_TIMEOUT_S) -> None:
        assert self.done.wait(timeout), "the call did not end in time"
