"""``keepa-fleet sim`` as a process: serves, takes its defaults from the settings, stops cleanly
on SIGTERM/SIGINT, rejects bad flags naming them."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import requests
from support import SIM_URL_LOGGED, fleet_command, logged, wait_until

KEY = "cli-test-key-1"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLEAN_ENV = {"FLEET_CONFIG": "", "KEEPA_API_KEY": "", "KEEPA_BASE_URL": ""}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **CLEAN_ENV, "PYTHONPATH": ROOT, **(env or {})}
    return subprocess.run(
        fleet_command("sim", *args),
        capture_output=True,
        text=True,
        timeout=30,
        env=full_env,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serves_until_signalled(processes, sig):
    proc = processes.start(
        "sim",
        fleet_command("sim", "--port", "0", "--tokens", "42", "--seed", "3", "--log-every", "0.2"),
        # Defaults from the settings: the environment here.
        env={**CLEAN_ENV, "FLEET_SIM_REFILL_RATE": "9", "KEEPA_REFILL_PERIOD_S": "30"},
    )
    url = logged(processes, "sim", proc, SIM_URL_LOGGED)  # it bound port 0 and says which
    resp = wait_until(
        lambda: requests.get(f"{url}/token", params={"key": KEY}, timeout=2),
        20,
        interval=0.1,
        message=lambda: f"the simulator answering; log:\n{processes.log('sim')}",
    )
    body = resp.json()
    assert body["tokensLeft"] == 42
    assert body["refillRate"] == 9
    assert 0 < body["refillIn"] <= 30_000
    wait_until(lambda: "1 requests" in processes.log("sim"), 10, message="a line of totals")
    proc.send_signal(sig)
    assert proc.wait(timeout=15) == 0
    log = processes.log("sim")
    assert "stopped:" in log
    assert KEY not in log  # never the key in the log


def test_help_is_complete():
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in (
        "--port",
        "--host",
        "--refill-rate",
        "--refill-period",
        "--tokens",
        "--seed",
        "--latency-scale",
        "--offer-fail-rate",
        "--catalog-size",
        "--deal-interval",
        "--deal-cache",
        "--strict-offer-cap",
        "--log-every",
        "/_sim/state",
        "/_sim/fault",
        "FLEET_SIM_PORT",
        "KEEPA_REFILL_PERIOD_S",
    ):
        assert flag in result.stdout, flag


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--refill-period", "0.01"], "--refill-period"),
        (["--port", "70000"], "--port"),
        (["--host", "0.0.0.0"], "--host"),
        (["--refill-rate", "many"], "--refill-rate"),
        (["--deal-cache", "-1"], "--deal-cache"),
    ],
)
def test_bad_flags_are_usage_errors_naming_the_flag(args, flag):
    result = run_cli(*args)
    assert result.returncode == 2
    assert flag in result.stderr


def test_bad_setting_is_a_configuration_error():
    result = run_cli("--port", "0", env={"FLEET_SIM_SEED": "-4"})
    assert result.returncode == 78
    assert "sim.seed" in result.stderr
