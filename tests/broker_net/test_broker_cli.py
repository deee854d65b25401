"""``keepa-fleet broker`` as a real process: it serves STATUS even while Keepa is down (no
grants then), drains and exits 0 on SIGTERM, exits 78 naming the setting on a bad
configuration, and 1 when its address is taken."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from support import (
    BROKER_ADDRESS_LOGGED,
    ROOT,
    Processes,
    fleet_command,
    logged,
    refused_port,
    wait_until,
)

from broker.status_cli import fetch_status


@pytest.fixture
def keepa_down() -> Iterator[int]:
    """A port that refuses connections for the whole test: Keepa is down."""
    with refused_port() as port:
        yield port


def clean_env(keepa_port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "KEEPA_"))}
    # Keepa refuses connections: every /token fails (and is retried with backoff).
    env["KEEPA_BASE_URL"] = f"http://127.0.0.1:{keepa_port}"
    env["FLEET_LOG_LEVEL"] = "INFO"  # the bound address is logged at INFO
    env.update(extra)
    return env


def start_broker(processes: Processes, name: str, keepa_port: int) -> str:
    """A broker process on port 0; the address it bound, read from its log."""
    proc = processes.start(
        name, fleet_command("broker", "--bind", "tcp://127.0.0.1:0"), env=clean_env(keepa_port)
    )
    return logged(processes, name, proc, BROKER_ADDRESS_LOGGED)


def test_broker_process_serves_and_drains_on_sigterm(processes: Processes, keepa_down: int) -> None:
    address = start_broker(processes, "broker", keepa_down)
    proc = processes.procs[-1][1]
    state = wait_until(
        lambda: fetch_status(address, timeout=1.0),
        20,
        interval=0.1,
        message=lambda: f"the broker answering; log:\n{processes.log('broker')}",
    )
    assert state["tokens"]["now"] is None  # Keepa never answered: nothing is known
    wait_until(
        lambda: (fetch_status(address, timeout=1.0) or {}).get("keepa", {}).get("errors", 0) > 0,
        20,
        message="the failing /token counted",
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    log = processes.log("broker")
    assert "listening on" in log and "draining" in log
    assert "Traceback" not in log


def test_a_bad_setting_exits_78_naming_it(keepa_down: int) -> None:
    proc = subprocess.run(
        fleet_command("broker", "--bind", "tcp://127.0.0.1:0"),
        env=clean_env(keepa_down, FLEET_BROKER_LIVENESS="1"),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert proc.returncode == 78
    assert "broker.liveness" in proc.stderr


def test_an_address_in_use_exits_1(processes: Processes, keepa_down: int) -> None:
    address = start_broker(processes, "first", keepa_down)
    wait_until(lambda: fetch_status(address, timeout=1.0), 20, interval=0.1)
    started = time.monotonic()
    proc = subprocess.run(
        fleet_command("broker", "--bind", address),
        env=clean_env(keepa_down),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 1
    assert "broker.address" in proc.stderr
    assert time.monotonic() - started < 30  # refuses at once: no retrying of the bind
