"""Under supervisord a fleet process exits when its parent dies without stopping it; outside
supervisord nothing is armed and it lives on."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT, fleet_command, wait_until

# The parent: starts the child with its log in a file, prints the child's pid.
PARENT = (
    "import subprocess, sys; "
    "log = open(sys.argv[1], 'ab'); "
    "child = subprocess.Popen(sys.argv[2:], stdout=log, stderr=log); "
    "print(child.pid, flush=True); "
    "child.wait()"
)
READY = re.compile(r"simulated Keepa API on http://127\.0\.0\.1:\d+")
TOTALS = "requests (+"


@pytest.mark.parametrize("supervised", [True, False])
def test_child_exits_when_its_supervisor_dies(supervised: bool, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("SUPERVISOR_ENABLED", None)
    if supervised:
        env["SUPERVISOR_ENABLED"] = "1"
    log = tmp_path / "sim.log"
    argv = fleet_command("sim", "--port", "0", "--latency-scale", "0", "--log-every", "0.1")
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(log), *argv],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())

        def text() -> str:
            return log.read_text(errors="replace") if log.exists() else ""

        # The child is serving: start-up (where the signal is armed, or not) is over.
        wait_until(lambda: READY.search(text()), 30, message=lambda: f"the sim; log:\n{text()}")
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        # Reparented: the parent's exit, and with it any parent-death signal, is behind us.
        wait_until(lambda: _ppid(child) != parent.pid, 20, message="the child reparented")
        if supervised:
            wait_until(lambda: not _running(child), 20, message="the orphan to exit")
            assert "stopped:" in text()  # it drained as on a normal stop
        else:
            # Nothing armed: the child goes on with its loop (two more totals lines).
            seen = text().count(TOTALS)
            wait_until(
                lambda: text().count(TOTALS) >= seen + 2 or "stopped:" in text(),
                20,
                message=lambda: f"the orphan's loop going on; log:\n{text()}",
            )
            assert "stopped:" not in text(), text()
            assert _running(child)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)


def _stat(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _ppid(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[1]) if fields else 0


def _running(pid: int) -> bool:
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"
