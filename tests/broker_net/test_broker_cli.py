"""``keepa-fleet broker`` as a real process: it serves STATUS even while Keepa is down (no
grants then), drains and exits 0 on SIGTERM, exits 78 naming the setting on a bad
configuration, and 1 when its address is taken."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from support import ROOT, Processes, fleet_command, free_port, wait_until

from broker.status_cli import fetch_status


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "KEEPA_"))}
    # Keepa is a port nobody listens on: every /token fails (and is retried with backoff).
    env["KEEPA_BASE_URL"] = f"http://127.0.0.1:{free_port()}"
    env.update(extra)
    return env


def test_broker_process_serves_and_drains_on_sigterm(processes: Processes) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    proc = processes.start("broker", fleet_command("broker", "--bind", address), env=clean_env())
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


def test_a_bad_setting_exits_78_naming_it() -> None:
    proc = subprocess.run(
        fleet_command("broker", "--bind", f"tcp://127.0.0.1:{free_port()}"),
        env=clean_env(FLEET_BROKER_LIVENESS="1"),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert proc.returncode == 78
    assert "broker.liveness" in proc.stderr


def test_an_address_in_use_exits_1(processes: Processes) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    processes.start("first", fleet_command("broker", "--bind", address), env=clean_env())
    wait_until(lambda: fetch_status(address, timeout=1.0), 20, interval=0.1)
    started = time.monotonic()
    proc = subprocess.run(
        fleet_command("broker", "--bind", address),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 1
    assert "broker.address" in proc.stderr
    assert time.monotonic() - started < 30  # refuses at once: no retrying of the bind
