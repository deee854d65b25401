"""Real worker processes against a fake broker: KILL exits even with the work loop stuck,
SIGTERM drains (call in hand settled, claims given back, BYE, exit 0), and the
``keepa-fleet worker`` command: an unusable database fails before connecting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from doubles import FakeBroker
from support import Processes, fleet_command, refused_port, wait_until

from common import protocol
from workers.runtime import EXIT_KILLED, EXIT_OK, EXIT_STORAGE

SCRIPT = Path(__file__).with_name("fake_worker.py")
EXIT_WAIT_S = 20.0
ENV = {
    "FLEET_BROKER_HEARTBEAT_S": "0.1",
    "FLEET_BROKER_LIVENESS": "50",
    "FLEET_WORKER_RECONNECT_MAX_S": "0.5",
    "FLEET_LOG_LEVEL": "DEBUG",
    "FLEET_CONFIG": "",
    "KEEPA_API_KEY": "",
}
SKIP_WHILE_DRAINING = (protocol.Heartbeat, protocol.Request, protocol.Cancel)


def start_fake(
    processes: Processes, broker: FakeBroker, tmp_path: Path, mode: str, name: str = "fake"
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, str(SCRIPT), "--broker", broker.address, "--id", name]
    return processes.start(name, [*argv, "--mode", mode, "--dir", str(tmp_path)], env=ENV)


def exit_code(proc: subprocess.Popen[bytes]) -> int:
    return proc.wait(timeout=EXIT_WAIT_S)


def granted_and_blocked(broker: FakeBroker, processes: Processes, name: str = "fake") -> bytes:
    """Handshake, grant the worker's request and wait until its fn is running."""
    identity, hello = broker.handshake(timeout=20)
    assert hello.worker_id == name
    _, req = broker.expect(protocol.Request)
    broker.send(identity, protocol.Grant(seq=req.seq, permit="p-1", cost=req.cost, lease_ttl_s=30))
    wait_until(lambda: "FN_STARTED" in processes.log(name), 20, message="fn running")
    return identity


def test_kill_exits_even_when_the_work_loop_is_stuck(
    broker: FakeBroker, processes: Processes, tmp_path: Path
) -> None:
    proc = start_fake(processes, broker, tmp_path, "call")
    identity = granted_and_blocked(broker, processes)
    broker.expect(protocol.Heartbeat)  # the link thread is alive while fn blocks
    broker.send(identity, protocol.Kill(reason="stalled"))
    _, bye = broker.expect(protocol.Bye)
    assert bye.reason == "killed: stalled"
    assert exit_code(proc) == EXIT_KILLED
    log = processes.log("fake")
    assert "KILL from the broker (stalled)" in log
    assert "CALL_DONE" not in log


def test_sigterm_finishes_the_call_in_hand_then_says_bye(
    broker: FakeBroker, processes: Processes, tmp_path: Path
) -> None:
    proc = start_fake(processes, broker, tmp_path, "call")
    granted_and_blocked(broker, processes)
    os.kill(proc.pid, signal.SIGTERM)
    broker.expect(protocol.Heartbeat)
    broker.expect(protocol.Heartbeat)
    assert proc.poll() is None, "exited with the call still in hand"
    (tmp_path / "release").touch()
    _, settle = broker.expect(protocol.Settle)
    assert (settle.permit, settle.status) == ("p-1", "ok")
    _, bye = broker.expect(protocol.Bye)
    assert bye.reason == "SIGTERM"
    assert exit_code(proc) == EXIT_OK
    log = processes.log("fake")
    assert "CALL_DONE 200" in log and "GAVE_BACK" in log


def test_sigterm_while_waiting_for_a_grant_cancels_and_says_bye(
    broker: FakeBroker, processes: Processes, tmp_path: Path
) -> None:
    proc = start_fake(processes, broker, tmp_path, "call")
    broker.handshake(timeout=20)
    _, req = broker.expect(protocol.Request)
    os.kill(proc.pid, signal.SIGTERM)
    _, cancel = broker.expect(protocol.Cancel)
    assert cancel.seq == req.seq
    _, bye = broker.expect(protocol.Bye)
    assert bye.reason == "SIGTERM"
    assert exit_code(proc) == EXIT_OK
    assert "FN_STARTED" not in processes.log("fake")


def test_cli_unusable_database_exits_before_connecting(
    broker: FakeBroker, processes: Processes, tmp_path: Path
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    db = not_a_dir / "fleet.db"
    argv = fleet_command("worker", "--broker", broker.address, "--db", str(db), "--id", "w1")
    proc = processes.start("cli", argv, env=ENV)
    assert exit_code(proc) == EXIT_STORAGE
    assert str(db.parent) in processes.log("cli")
    assert broker.drain() == []  # it never said HELLO


def test_cli_worker_says_hello_and_drains_on_sigterm(
    broker: FakeBroker, processes: Processes, tmp_path: Path
) -> None:
    with refused_port() as keepa_port:  # no Keepa: the deals stage's calls are refused
        env = {**ENV, "KEEPA_BASE_URL": f"http://127.0.0.1:{keepa_port}"}
        argv = fleet_command(
            "worker",
            *("--broker", broker.address, "--role", "deals"),
            *("--db", str(tmp_path / "fleet.db"), "--id", "cli_w"),
        )
        proc = processes.start("cli", argv, env=env)
        _, hello = broker.handshake(timeout=20)
        assert (hello.worker_id, hello.role, hello.pid) == ("cli_w", "deals", proc.pid)
        broker.expect(protocol.Heartbeat, skip=(protocol.Request,))  # the deals stage may ask
        os.kill(proc.pid, signal.SIGTERM)
        _, bye = broker.expect(protocol.Bye, skip=SKIP_WHILE_DRAINING)
        assert bye.reason == "SIGTERM"
        assert exit_code(proc) == EXIT_OK
