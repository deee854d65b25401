"""The Keepa API key never appears in logs, status output, metrics, the database or
exception text.

A short fleet (simulator, broker with metrics, two workers, all at DEBUG) runs with
``KEEPA_API_KEY`` set to a recognisable random key and ``KEEPA_BASE_URL`` at the simulator
(which takes any well-formed key). Errors are provoked: Keepa answers 500s, malformed bodies,
dropped connections and answers past the read timeout on every endpoint; a third worker
talks to a closed port (connection refused); a worker starts with a bad setting. Then every
log file of the fleet, ``keepa-fleet status`` and ``--json``, the metrics page, the SQLite
files (database, WAL, shared memory: raw bytes) and the text of every exception the Keepa
client raises (``str``, ``repr`` and the formatted traceback, with the client's DEBUG logs)
are searched for the key and for its distinctive parts. The simulator's own log is left
out: it stands for Keepa, which is given the key. Log the request URL anywhere and this
test fails."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import secrets
import subprocess
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from fleet import Fleet
from support import (
    ROOT,
    BindRace,
    ChildExited,
    Processes,
    fleet_command,
    refused_port,
    retry_bind_race,
    unused_port,
    wait_until,
)

from common.errors import KeepaError
from common.keepa import KeepaClient
from common.log import setup_logging

pytestmark = pytest.mark.e2e

CORE = secrets.token_hex(12)
KEY = f"LeakCanary_{CORE}"
# The key, and pieces of it a truncated or split message could still carry.
NEEDLES = [KEY, CORE, CORE[:12], CORE[12:], f"key={KEY[:8]}"]
FAULTS = [
    {"kind": "500", "count": 1, "path": "/product"},
    {"kind": "500", "count": 1, "path": "/deal"},
    {"kind": "500", "count": 1, "path": "/token"},
    {"kind": "malformed", "count": 1, "path": "/product"},
    {"kind": "malformed", "count": 1, "path": "/deal"},
    {"kind": "malformed", "count": 1, "path": "/token"},
    {"kind": "drop", "count": 1, "path": "/product"},
    {"kind": "drop", "count": 1, "path": "/deal"},
    {"kind": "drop", "count": 1, "path": "/token"},
    {"kind": "delay", "count": 1, "path": "/deal", "delay_s": 3.0},
]


def leaks(text: str | bytes) -> list[str]:
    data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    return [n for n in NEEDLES if n.encode() in data]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fleet_command(*args), capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
    )


def client_exception_texts(fleet: Fleet) -> str:
    """Every kind of error the Keepa client raises, as text, with its DEBUG logs."""
    buf = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    setup_logging("DEBUG", stream=buf)
    texts: list[str] = []
    refused = contextlib.ExitStack()
    try:
        urls = []
        for kind in ("500", "malformed", "drop", "delay"):
            fleet.sim_admin("fault", kind=kind, count=2, delay_s=2.0)
            urls.append(fleet.sim_url)
        urls.append(f"http://127.0.0.1:{refused.enter_context(refused_port())}")
        for url in urls:
            client = KeepaClient(url, KEY, connect_timeout_s=1.0, read_timeout_s=0.5)
            for call in (client.token, lambda c=client: c.product(["B000000001"], offers=20)):
                try:
                    call()
                except KeepaError as exc:
                    texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
            texts.append(repr(client))
            client.close()
    finally:
        refused.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    assert len(texts) >= 25, texts
    return "\n".join(texts) + buf.getvalue()


def start_broker_with_metrics(fleet: Fleet, tmp_path: Path) -> int:
    """The broker with its metrics on a chosen port (broker.metrics_port cannot be 0):
    started again on another port if that one was taken before the broker bound it."""
    port = unused_port()
    fleet.env["FLEET_BROKER_METRICS_PORT"] = str(port)
    try:
        fleet.start_broker()
    except ChildExited as exc:
        if "Address already in use" not in fleet.processes.log("broker"):
            raise
        (tmp_path / "broker.log").unlink()
        raise BindRace(str(exc)) from exc
    return port


@pytest.fixture
def keepa_down() -> Iterator[int]:
    with refused_port() as port:
        yield port


def test_the_api_key_appears_nowhere(tmp_path: Path, processes: Processes, keepa_down: int) -> None:
    refused_url = f"http://127.0.0.1:{keepa_down}"
    fleet = Fleet(
        processes,
        tmp_path,
        refill_rate=100,
        refill_period_s=0.5,
        latency_scale=0.02,
        key=KEY,
        env={
            "FLEET_LOG_LEVEL": "DEBUG",
            "FLEET_KEEPA_READ_TIMEOUT_S": "2",
            "FLEET_BROKER_LEASE_TTL_S": "5",
        },
    )
    fleet.env["FLEET_LOG_LEVEL"] = "INFO"
    fleet.start_sim()
    fleet.env["FLEET_LOG_LEVEL"] = "DEBUG"
    metrics_port = retry_bind_race(lambda: start_broker_with_metrics(fleet, tmp_path))
    fleet.start_worker("w0")
    fleet.start_worker("w1", "deals")  # pages /deal all the time: its faults are taken
    refused = dict(fleet.env, KEEPA_BASE_URL=refused_url)
    processes.start(
        "w-refused",
        fleet_command("worker", "--id", "w-refused", "--db", str(fleet.db)),
        env=refused,
    )
    bad = cli({**os.environ, **fleet.env, "FLEET_BROKER_HEARTBEAT_S": "soon"}, "worker")
    assert bad.returncode == 78, bad
    # The fleet really uses the key: the simulator knows the account by it.
    wait_until(lambda: fleet.sim_state()["tokens_consumed"] > 0, 40, interval=0.1)
    for fault in FAULTS:
        fleet.sim_admin("fault", **fault)
    wait_until(
        lambda: not fleet.sim_state()["faults_pending"],
        60,
        interval=0.1,
        message=lambda: f"faults taken: {fleet.sim_state()['faults_pending']}",
    )
    wait_until(
        lambda: (
            "connection failed" in processes.log("w-refused")
            or "refused" in processes.log("w-refused")
        ),
        30,
        interval=0.1,
        message=lambda: processes.log("w-refused")[-2000:],
    )
    state = fleet.status()
    assert state is not None and state["keepa"]["errors"] >= 5, state and state["keepa"]

    places: dict[str, str | bytes] = {}
    env = {**os.environ, **fleet.env}
    places["status"] = cli(env, "status", "--broker", fleet.broker_address).stdout
    places["status --json"] = cli(env, "status", "--broker", fleet.broker_address, "--json").stdout
    assert '"broker_id"' in str(places["status --json"])
    places["bad setting"] = bad.stdout + bad.stderr
    places["metrics"] = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert "keepa_fleet_permits_granted" in str(places["metrics"])
    # Stop the fleet (logs flushed, database closed); the simulator stays for the client.
    for name, proc in processes.procs:
        if name != "sim":
            proc.terminate()
    for name, proc in processes.procs:
        if name != "sim":
            proc.wait(timeout=60)
    places["client exceptions"] = client_exception_texts(fleet)
    processes.stop_all()
    for path in sorted(tmp_path.glob("*.log")):
        if path.name != "sim.log":  # the simulator plays Keepa, which is given the key
            places[path.name] = path.read_bytes()
    for path in sorted(tmp_path.glob("fleet.db*")):
        places[path.name] = path.read_bytes()
    assert {"broker.log", "w0.log", "w1.log", "w-refused.log", "fleet.db"} <= set(places)
    # The errors really were provoked and logged.
    logs = b"".join(v for k, v in places.items() if k.endswith(".log") and isinstance(v, bytes))
    for evidence in (b"HTTP 500", b"not Keepa JSON", b"connection failed", b"no answer within"):
        assert evidence in logs, evidence
    found = {where: hits for where, text in places.items() if (hits := leaks(text))}
    assert not found, f"the API key leaked into: {found}"
    assert re.search(rb"\d{1,3} tokens", logs)  # the logs did say things
