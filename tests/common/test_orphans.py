"""Under supervisord a fleet process exits when its parent dies without stopping it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT, fleet_command, free_port, wait_until

PARENT = (
    "import subprocess, sys; "
    "child = subprocess.Popen(sys.argv[1:]); "
    "print(child.pid, flush=True); "
    "child.wait()"
)


@pytest.mark.parametrize("supervised", [True, False])
def test_child_exits_when_its_supervisor_dies(supervised: bool) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("SUPERVISOR_ENABLED", None)
    if supervised:
        env["SUPERVISOR_ENABLED"] = "1"
    argv = fleet_command("sim", "--port", str(free_port()), "--latency-scale", "0")
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, *argv],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        if supervised:
            wait_until(lambda: not _running(child), 20, message="the orphan to exit")
        else:
            # Outside supervisord nothing is armed: the child lives on (stopped below).
            assert _running(child)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
