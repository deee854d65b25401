"""The test doubles of the project, one for each side of the wire.

``CoreHarness``: the broker without sockets — a real ``BrokerCore`` (``broker/core.py``) whose
sends are recorded (``RecordingSend``), whose /token requests are recorded and answered by
the test (``answer_sync``), whose signals are recorded instead of sent, on a clock the test
moves. Unit tests, the fuzzers and the benches that need "a broker" without a process use
this.

``FakeBroker``: the broker as a worker sees it — a real ROUTER on 127.0.0.1 that the test
drives (expect a HELLO, answer WELCOME, send GRANT or KILL), for tests of the worker's link,
permit client and runtime, and of what a worker does with a KILL from an impostor.

``Peer``: a fleet peer as the broker sees it — a real DEALER that speaks the protocol
(HELLO, REQUEST, SETTLE, HEARTBEAT, ...) and reads what comes back, for tests against a real
broker.
"""

from __future__ import annotations

import os
import time
from typing import Any, TypeVar

import zmq
from support import wait_until

from broker.core import BrokerCore
from broker.core import Peer as From
from broker.sync import SyncResult
from common import protocol
from common.config import Settings, load_settings
from common.keepa import TokenEnvelope

M = TypeVar("M", bound=protocol.Message)
RECV_TIMEOUT_S = 10.0
THIS_HOST = "double-host"
OTHER_HOST = "elsewhere"
KEEPA_EPOCH_MS = 1_700_000_000_000

CORE_SETTINGS: dict[str, Any] = {
    "broker.address": "tcp://127.0.0.1:0",
    "broker.heartbeat_s": 1.0,
    "broker.liveness": 3,
    "broker.stall_s": 5.0,
    "broker.kill_grace_s": 1.0,
    "broker.lease_ttl_s": 10.0,
    "keepa.read_timeout_s": 5.0,
    "broker.sync_min_interval_s": 0.5,
    "broker.short_wait_s": 2.0,
    "keepa.refill_period_s": 1.0,
}


def core_settings(**overrides: Any) -> Settings:
    """Settings for a core on a 1 s heartbeat and a 1 s refill step; ``overrides`` are
    settings keys with ``__`` for the dot (``broker__soft_floor=0``)."""
    values = dict(CORE_SETTINGS)
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_settings(env={}, overrides=values)


def envelope(now: float, tokens_left: int, rate: int, consumed: int = 0) -> TokenEnvelope:
    """A Keepa envelope at broker time ``now`` (the refill steps every whole second)."""
    ms = int(now * 1000)
    return TokenEnvelope(
        timestamp_ms=KEEPA_EPOCH_MS + ms,
        tokens_left=tokens_left,
        refill_in_ms=1000 - ms % 1000,
        refill_rate=rate,
        tokens_consumed=consumed,
    )


# --- the broker's transport, for a core without sockets ------------------------------------


class FakeRouter:
    """Records what the broker sends; fails a send when told to (a full or gone peer)."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []
        self.fail_next = 0
        self._taken = 0

    def send(self, frames: list[bytes]) -> bool:
        if self.fail_next:
            self.fail_next -= 1
            return False
        self.sent.append(list(frames))
        return True

    def take(self) -> list[tuple[bytes, protocol.Message]]:
        """(identity, message) of everything sent since the last ``take``."""
        out = self.replies(self._taken)
        self._taken = len(self.sent)
        return out

    def replies(self, start: int = 0) -> list[tuple[bytes, protocol.Message]]:
        """(identity, message) of everything sent from index ``start`` on."""
        return [
            (f[0], protocol.decode(f[-1], max_bytes=protocol.MAX_REPLY_BYTES))
            for f in self.sent[start:]
        ]


class FakeSync:
    """The /token thread's request side."""

    def __init__(self) -> None:
        self.requests: list[str] = []

    def request(self, reason: str) -> bool:
        self.requests.append(reason)
        return True


# --- the broker, in process -------------------------------------------------------------


class CoreHarness:
    """A ``BrokerCore`` driven by hand: ``send`` a message, ``advance`` the clock (which runs
    the housekeeping), read what the core sent."""

    def __init__(self, **overrides: Any) -> None:
        self.now = 0.0
        self.sent = FakeRouter()
        self.sync_requests: list[str] = []
        self.signals: list[tuple[int, int]] = []
        self.core = BrokerCore(
            core_settings(**overrides),
            send=self.sent.send,
            request_sync=self._request_sync,
            clock=lambda: self.now,
            wall_clock=lambda: 1_700_000_000.0 + self.now,
            signal_fn=lambda pid, sig: self.signals.append((pid, sig)),
            this_host=THIS_HOST,
        )

    def _request_sync(self, reason: str) -> bool:
        self.sync_requests.append(reason)
        return True

    def send(self, identity: bytes, msg: protocol.Message) -> list[protocol.Message]:
        """Hand ``msg`` from ``identity`` to the core; the messages sent during it (to
        anyone, in order)."""
        self.core.handle(From(identity), msg, self.now)
        return [m for _, m in self.sent.take()]

    def send_frames(self, frames: list[bytes]) -> list[protocol.Message]:
        """Raw ROUTER frames (identity first), decoded by the core as the transport does."""
        self.core.dispatch(frames, self.now)
        return [m for _, m in self.sent.take()]

    def advance(self, dt: float) -> list[tuple[bytes, protocol.Message]]:
        """Move the clock and run the housekeeping; (identity, message) of what was sent."""
        self.now += dt
        self.core.housekeeping(self.now)
        return self.sent.take()

    def hello(
        self,
        identity: bytes,
        worker_id: str = "w1",
        *,
        host: str = OTHER_HOST,
        pid: int = 4242,
        start_time: int = 1,
        role: str = "all",
    ) -> protocol.Message:
        replies = self.send(
            identity,
            protocol.Hello(
                worker_id=worker_id,
                pid=pid,
                host=host,
                start_time=start_time,
                role=role,
                version="test",
            ),
        )
        assert len(replies) == 1, replies
        return replies[0]

    def answer_sync(self, tokens_left: int, rate: int) -> None:
        """Answer the /token request the core made (there must be one)."""
        assert self.sync_requests, "the core asked Keepa nothing"
        reason = self.sync_requests.pop(0)
        self.core._on_sync_result(
            SyncResult(reason, self.now, self.now, envelope(self.now, tokens_left, rate))
        )


def own_start_time() -> int:
    """This process's start time as the broker checks it (a same-host HELLO)."""
    from common import procinfo

    start = procinfo.process_start_time(os.getpid())
    assert start is not None
    return start


# --- the broker, on a socket: a scripted ROUTER a worker's link talks to ------------------


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

    def wait_for(self, cls: type[protocol.Message], timeout: float = RECV_TIMEOUT_S) -> bytes:
        """The identity of the next peer that sends a ``cls`` (anything else passed over)."""
        identity, _ = self.expect(cls, timeout, skip=(protocol.Message,))
        return identity

    def welcome(self, identity: bytes, *, heartbeat_s: float = 0.2, liveness: int = 50) -> None:
        self.send(identity, protocol.Welcome("fake", heartbeat_s, liveness, 30.0))

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


# --- a peer of the broker: a DEALER speaking the protocol ---------------------------------


class Peer:
    """One DEALER speaking the protocol to the broker."""

    def __init__(self, ctx: zmq.Context[Any], address: str, identity: bytes | None = None):
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.sndtimeo = int(RECV_TIMEOUT_S * 1000)
        if identity is not None:
            self.sock.setsockopt(zmq.IDENTITY, identity)
        self.sock.connect(address)

    def send(self, msg: protocol.Message) -> None:
        self.sock.send(msg.encode())

    def send_raw(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def recv(
        self, timeout: float = RECV_TIMEOUT_S, *, heartbeats: bool = False
    ) -> protocol.Message:
        """The next message (broker heartbeats skipped unless asked for)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.sock.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                raise AssertionError(f"no message from the broker within {timeout} s")
            msg = protocol.decode(self.sock.recv(), max_bytes=protocol.MAX_REPLY_BYTES)
            if heartbeats or not isinstance(msg, protocol.Heartbeat):
                return msg

    def expect(self, cls: type[Any], timeout: float = RECV_TIMEOUT_S) -> Any:
        msg = self.recv(timeout, heartbeats=cls is protocol.Heartbeat)
        assert isinstance(msg, cls), f"expected {cls.TYPE}, got {msg!r}"
        return msg

    def hello(self, worker_id: str = "w1", *, host: str = "elsewhere", pid: int = 4242) -> Any:
        self.send(protocol.Hello(worker_id, pid, host, 1, "test", "test"))
        return self.expect(protocol.Welcome)

    def close(self) -> None:
        self.sock.close(linger=0)
