"""Kills with real client processes (tests/broker_net/client.py) against a broker thread:
a silent client is SIGTERMed and its lease expires, a SIGSTOPped one is killed the same way,
a stalled one (heartbeats, frozen progress) too, one on "another host" gets a KILL message,
and a pid whose start time differs from its HELLO is never signalled."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from broker_net.net_support import broker_settings, status, worker_status
from support import Processes, wait_until

from broker.server import Broker
from common import procinfo

CLIENT = str(Path(__file__).with_name("client.py"))
KILL_SETTINGS = {
    "broker__heartbeat_s": 0.1,
    "broker__liveness": 4,  # silent after 0.4 s
    "broker__kill_grace_s": 1.0,
    "broker__stall_s": 60.0,
    "keepa__read_timeout_s": 0.5,
    "broker__lease_ttl_s": 1.0,
}


def start_client(
    processes: Processes, broker: Broker, worker_id: str, mode: str, *extra: str
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, CLIENT, "--broker", broker.address, "--id", worker_id]
    return processes.start(worker_id, [*argv, "--mode", mode, "--heartbeat-s", "0.1", *extra])


def registered(broker: Broker, worker_id: str) -> dict[str, Any]:
    return wait_until(
        lambda: worker_status(broker.address, worker_id),
        20,
        message=f"{worker_id} registered",
    )


def kill_of(broker: Broker, worker_id: str) -> dict[str, Any] | None:
    for k in status(broker.address)["kills"]:
        if k["worker"] == worker_id:
            return dict(k)
    return None


def test_a_silent_client_is_killed_and_its_lease_reclaimed(
    serve: Callable[..., Broker], processes: Processes
) -> None:
    broker = serve(broker_settings(**KILL_SETTINGS))
    proc = start_client(processes, broker, "holder", "hold")
    wait_until(
        lambda: status(broker.address)["permits"]["granted"] == 1,
        20,
        message=lambda: f"the client holding a permit; log:\n{processes.log('holder')}",
    )
    syncs_before = status(broker.address)["keepa"]["token_syncs"]
    wait_until(lambda: proc.poll() is not None, 20, message="the silent client killed")
    assert proc.returncode == -signal.SIGTERM
    kill = wait_until(lambda: kill_of(broker, "holder"), 10, message="the kill recorded")
    assert (kill["reason"], kill["action"], kill["pid"]) == ("silent", "sigterm", proc.pid)
    s = wait_until(
        lambda: (lambda s: s if s["permits"]["expired"] == 1 else None)(status(broker.address)),
        20,
        message="the lease expired",
    )
    assert s["tokens"]["in_flight"] == 0
    # An expired lease means an unknown outcome: the broker asks Keepa.
    wait_until(lambda: status(broker.address)["keepa"]["token_syncs"] > syncs_before, 10)
    wait_until(
        lambda: worker_status(broker.address, "holder")["state"] == "gone",  # type: ignore[index]
        10,
    )
    assert status(broker.address)["kills_by_reason"] == {"silent": 1}


def test_a_sigstopped_client_is_killed(serve: Callable[..., Broker], processes: Processes) -> None:
    broker = serve(broker_settings(**KILL_SETTINGS))
    proc = start_client(processes, broker, "sleeper", "idle")
    registered(broker, "sleeper")
    proc.send_signal(signal.SIGSTOP)
    wait_until(lambda: proc.poll() is not None, 20, message="the stopped client killed")
    assert proc.returncode == -signal.SIGTERM  # SIGCONT let it act on the SIGTERM
    kill = wait_until(lambda: kill_of(broker, "sleeper"), 10)
    assert kill["reason"] == "silent" and kill["action"] == "sigterm"


def test_a_stalled_client_is_killed(serve: Callable[..., Broker], processes: Processes) -> None:
    settings = {**KILL_SETTINGS, "broker__stall_s": 0.8, "broker__liveness": 20}
    broker = serve(broker_settings(**settings))
    proc = start_client(processes, broker, "stuck", "idle")  # heartbeats, progress frozen
    wait_until(lambda: proc.poll() is not None, 20, message="the stalled client killed")
    kill = wait_until(lambda: kill_of(broker, "stuck"), 10)
    assert kill["reason"] == "stalled" and kill["action"] == "sigterm"


def test_a_client_on_another_host_gets_a_kill_message(
    serve: Callable[..., Broker], processes: Processes
) -> None:
    settings = {**KILL_SETTINGS, "broker__stall_s": 0.8, "broker__liveness": 20}
    broker = serve(broker_settings(**settings))
    proc = start_client(processes, broker, "remote", "idle", "--host", "some-other-host")
    wait_until(lambda: proc.poll() is not None, 20, message="the remote client told to die")
    assert proc.returncode == 3  # it exited on KILL (no signal was sent)
    kill = wait_until(lambda: kill_of(broker, "remote"), 10)
    assert kill["action"] == "kill_message" and kill["reason"] == "stalled"


def test_a_pid_whose_start_time_differs_is_not_signalled(
    serve: Callable[..., Broker], processes: Processes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="broker.killer")
    broker = serve(broker_settings(**KILL_SETTINGS))
    proc = start_client(processes, broker, "liar", "silent", "--start-time-offset", "7")
    w = registered(broker, "liar")
    assert w["pid"] == proc.pid
    kill = wait_until(lambda: kill_of(broker, "liar"), 20, message="the kill decision")
    assert kill["action"] == "skipped_pid_mismatch"
    wait_until(
        lambda: worker_status(broker.address, "liar")["state"] == "gone",  # type: ignore[index]
        10,
    )
    # Well past the grace: nothing was sent, the process lives on with its real start time.
    grace = KILL_SETTINGS["broker__kill_grace_s"]
    wait_until(lambda: kill_of(broker, "liar")["age_s"] > grace + 1.0, 10)  # type: ignore[index]
    assert proc.poll() is None
    assert procinfo.process_state(proc.pid) not in (None, "Z")
    assert any("not killing worker liar" in r.getMessage() for r in caplog.records)
