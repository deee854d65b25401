"""Only the broker may tell a worker to die.

A worker's DEALER connects out to the broker's address and binds nothing, so "anything
else" is whatever else answers there: something listening at the broker's address that
never welcomed this worker (an impostor, or a stale process holding the port). A KILL is
obeyed only from the connection whose WELCOME registered the worker; any other is ignored
and logged (``BrokerLink.kills_ignored``). A KILL sent *to* the broker by a peer is a bad
message: counted, answered with ERROR, and nobody is killed. (With CURVE, a worker also
refuses a broker without the broker's key: ``test_curve_fleet``.)

Make the link obey every KILL and the first two tests fail."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from doubles import FakeBroker
from support import Processes, fleet_command, refused_port, wait_until

from broker.server import running_broker
from common import protocol
from common.config import load_settings
from common.keepa import KeepaResponse, TokenEnvelope
from workers.link import BrokerLink
from workers.runtime import EXIT_KILLED

RECV_S = 10.0


# An impostor: something else listening at the broker's address (the broker double).
Impostor = FakeBroker


@pytest.fixture
def impostor() -> Any:
    imp = Impostor()
    yield imp
    imp.close()


def test_link_ignores_a_kill_before_welcome(impostor: Impostor) -> None:
    killed: list[str] = []
    link = BrokerLink(
        impostor.address, worker_id="w-k", role="all", heartbeat_s=0.2, liveness=50,
        on_kill=killed.append,
    )  # fmt: skip
    link.start()
    try:
        identity = impostor.wait_for(protocol.Hello)
        impostor.send(identity, protocol.Kill("not your broker"))
        wait_until(lambda: link.kills_ignored == 1, RECV_S, message="the KILL seen and ignored")
        assert killed == [] and link.alive
        # Once this connection's WELCOME has registered the worker, KILL is obeyed.
        impostor.welcome(identity)
        wait_until(lambda: link.ready, RECV_S)
        impostor.send(identity, protocol.Kill("the broker says so"))
        wait_until(lambda: killed == ["the broker says so"], RECV_S)
    finally:
        link.close(None, timeout_s=5)


@pytest.fixture
def keepa_down() -> Iterator[int]:
    with refused_port() as port:
        yield port


def test_worker_process_survives_a_kill_from_what_never_welcomed_it(
    impostor: Impostor, processes: Processes, tmp_path: Path, keepa_down: int
) -> None:
    env = {
        "FLEET_BROKER_HEARTBEAT_S": "0.2",
        "FLEET_BROKER_LIVENESS": "50",
        "FLEET_WORKER_RECONNECT_MAX_S": "0.5",
        "KEEPA_BASE_URL": f"http://127.0.0.1:{keepa_down}",  # refused
        "FLEET_CONFIG": "",
    }
    argv = fleet_command(
        "worker", "--id", "w-k", "--broker", impostor.address, "--db", str(tmp_path / "w.db")
    )
    proc = processes.start("w-k", argv, env=env)
    identity = impostor.wait_for(protocol.Hello, timeout=30)
    for _ in range(3):
        impostor.send(identity, protocol.Kill("die"))
    wait_until(
        lambda: processes.log("w-k").count("ignored KILL") == 3,
        RECV_S,
        message=lambda: processes.log("w-k")[-2000:],
    )
    assert proc.poll() is None, "a KILL from what never welcomed the worker killed it"
    impostor.welcome(identity)
    wait_until(lambda: "connected to broker" in processes.log("w-k"), RECV_S)
    impostor.send(identity, protocol.Kill("now from the broker"))
    assert proc.wait(timeout=30) == EXIT_KILLED


class NoKeepa:
    def token(self) -> KeepaResponse:
        env = TokenEnvelope(int(time.time() * 1000), 100, 60_000, 20, 0.0, 0, 1)
        return KeepaResponse(200, env, {}, 0.0)


def test_a_kill_sent_to_the_broker_is_counted_and_kills_nobody() -> None:
    settings = load_settings(
        env={},
        overrides={"broker.address": "tcp://127.0.0.1:0", "broker.heartbeat_s": 0.2},
    )
    ctx: zmq.Context[Any] = zmq.Context()
    with running_broker(settings, keepa_client=NoKeepa(), this_host="elsewhere") as broker:
        worker = ctx.socket(zmq.DEALER)
        rogue = ctx.socket(zmq.DEALER)
        for sock in (worker, rogue):
            sock.linger = 0
            sock.connect(broker.address)
        try:
            worker.send(protocol.Hello("w-victim", 4242, "other-host", 1, "all", "t").encode())
            assert worker.poll(int(RECV_S * 1000))
            assert isinstance(protocol.decode(worker.recv()), protocol.Welcome)
            rogue.send(protocol.Kill("w-victim").encode())
            assert rogue.poll(int(RECV_S * 1000))
            err = protocol.decode(rogue.recv())
            assert isinstance(err, protocol.Error) and err.code == "unexpected_type", err
            # What the victim receives meanwhile: heartbeats only, never a KILL.
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                if worker.poll(100):
                    msg = protocol.decode(worker.recv())
                    assert not isinstance(msg, protocol.Kill), msg
                    worker.send(protocol.Heartbeat(progress=1).encode())
            state = broker.status(broker.clock())
        finally:
            worker.close(0)
            rogue.close(0)
    ctx.term()
    assert state["bad_messages"] == {"unexpected_type": 1}
    assert state["kills"] == []
