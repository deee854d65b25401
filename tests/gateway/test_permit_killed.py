"""A user's script killed while it holds a permit of the Python permit API: the broker
counts the permit in flight until its lease ends, then nothing is left of it."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from fleet import Fleet
from gateway_support import client_status
from support import ROOT, wait_until

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from gateway.client import connect
    fleet = connect("doomed", broker=sys.argv[1])
    with fleet.permit(cost=7) as p:
        print("HELD", flush=True)
        time.sleep(600)  # killed here, never settles
    """
)


def test_a_script_killed_holding_a_permit_leaks_nothing(processes, tmp_path: Path) -> None:
    # Short leases (they must outlast the Keepa read timeout) so the test is short.
    env = {"FLEET_KEEPA_READ_TIMEOUT_S": "1", "FLEET_BROKER_LEASE_TTL_S": "2"}
    fleet = Fleet(processes, tmp_path, env=env)
    fleet.start_sim()
    fleet.start_broker()
    script = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, fleet.broker_address],
        stdout=subprocess.PIPE,
        env={**fleet.env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    try:
        assert script.stdout is not None
        assert script.stdout.readline().strip() == b"HELD"
        row = client_status(fleet, "doomed")
        assert row["permits_held"] == 1
        assert fleet.status()["tokens"]["in_flight"] == 7
        script.send_signal(signal.SIGKILL)
        script.wait(timeout=10)
        state = wait_until(
            lambda: (
                (s := fleet.status())
                and s["tokens"]["in_flight"] == 0
                and s["permits"]["expired"] == 1
                and s
            ),
            30,
            message="the permit's lease ended",
        )
        assert state["permits"]["queued"] == 0
        assert client_status(fleet, "doomed").get("permits_held", 0) == 0
    finally:
        if script.poll() is None:
            script.kill()
            script.wait(timeout=10)
