"""``keepa-fleet status`` as a subprocess against a broker thread: ``--json`` is one JSON
object with the documented keys, the summary shows the workers table, ``--watch`` refreshes
until Ctrl-C, and with no broker it exits 2 within its timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest
from doubles import Peer
from support import ROOT, Processes, fleet_command, silent_port, wait_until

from broker import status_cli
from broker.server import Broker
from broker.status_cli import DEFAULT_TIMEOUT_S, format_status
from common import protocol
from common.cli import build_parser

TOKENS_KEYS = {
    "now",
    "available",
    "in_flight",
    "refill_rate",
    "refill_in_ms",
    "cap",
    "recharge_mode",
    "last_sync_age_s",
    "unaccounted",
    "spent",
}
PERMITS_KEYS = {"granted", "settled", "expired", "rejected", "queued", "oldest_wait_s"}
WORKER_KEYS = {
    "id",
    "host",
    "pid",
    "role",
    "state",
    "heartbeat_age_s",
    "progress",
    "permits_held",
    "tokens_spent",
    "stage",
    "items_done",
}
TOP_KEYS = {
    "tokens",
    "permits",
    "workers",
    "kills",
    "keepa",
    "bad_messages",
    "pipeline",
    "uptime_s",
    "version",
}


def run_status(
    *args: str, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fleet_command("status", *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def with_a_worker(serve: Callable[..., Broker], peers: Callable[..., Peer]) -> Broker:
    broker = serve()
    peer = peers(broker.address)
    peer.hello("worker_07")
    peer.send(protocol.Heartbeat(progress=3, stage="ingest", items_done=12))
    peer.send(protocol.Request(seq=1, cost=10))
    peer.expect(protocol.Grant)
    return broker


def test_json_has_the_documented_keys(
    serve: Callable[..., Broker], peers: Callable[..., Peer]
) -> None:
    broker = with_a_worker(serve, peers)
    proc = run_status("--broker", broker.address, "--json", "--timeout", "10")
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout)  # exactly one JSON object
    assert isinstance(state, dict)
    assert set(state) >= TOP_KEYS
    assert set(state["tokens"]) >= TOKENS_KEYS
    assert set(state["permits"]) >= PERMITS_KEYS
    assert {"token_syncs", "status_429", "errors"} <= set(state["keepa"])
    [worker] = state["workers"]
    assert set(worker) >= WORKER_KEYS
    assert worker["id"] == "worker_07" and worker["permits_held"] == 1
    assert state["permits"]["granted"] == 1
    assert state["tokens"]["in_flight"] == 10


def test_human_output_shows_the_workers_table(
    serve: Callable[..., Broker], peers: Callable[..., Peer]
) -> None:
    broker = with_a_worker(serve, peers)
    proc = run_status("--broker", broker.address, "--timeout", "10")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("tokens ") for line in lines), proc.stdout
    assert any(line.startswith("permits ") and "granted 1" in line for line in lines)
    header = next(line for line in lines if line.startswith("ID "))
    assert header.split()[:4] == ["ID", "STATE", "PID", "HOST"]
    row = next(line for line in lines if line.startswith("worker_07"))
    assert row.split()[1:3] == ["ALIVE", "4242"]


def test_the_address_comes_from_fleet_broker(
    serve: Callable[..., Broker], peers: Callable[..., Peer]
) -> None:
    broker = with_a_worker(serve, peers)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env["FLEET_BROKER"] = broker.address
    proc = run_status("--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["broker_id"] == broker.broker_id


def test_no_broker_exits_2() -> None:
    with silent_port() as port:  # accepts TCP, never speaks ZeroMQ
        proc = run_status("--broker", f"tcp://127.0.0.1:{port}", "--json", "--timeout", "1")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "no answer" in proc.stderr


@pytest.mark.parametrize("timeout", [0.5, DEFAULT_TIMEOUT_S + 2.5])
def test_no_answer_takes_exactly_the_timeout(
    timeout: float, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process (no interpreter start-up in the figure): ``--timeout`` both shortens and
    lengthens the wait; the default would be off by seconds either way."""
    args = build_parser().parse_args(["status", "--json", "--timeout", str(timeout)])
    with silent_port() as port:
        args.broker = f"tcp://127.0.0.1:{port}"
        started = time.monotonic()
        assert status_cli.run(args) == status_cli.EXIT_NO_ANSWER
        elapsed = time.monotonic() - started
    assert elapsed >= timeout
    assert elapsed < timeout + 2.0, elapsed  # DEFAULT_TIMEOUT_S is 2 s or more away
    assert "no answer" in capsys.readouterr().err


def test_watch_refreshes_until_ctrl_c(
    serve: Callable[..., Broker], peers: Callable[..., Peer], processes: Processes
) -> None:
    broker = with_a_worker(serve, peers)
    argv = fleet_command("status", "--broker", broker.address, "--watch", "0.2", "--timeout", "5")
    proc = processes.start("watch", argv)
    wait_until(
        lambda: processes.log("watch").count("worker_07") >= 2,
        20,
        message=lambda: f"two refreshes; output:\n{processes.log('watch')}",
    )
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0


def test_help_names_every_option() -> None:
    proc = run_status("--help")
    assert proc.returncode == 0
    for option in ("--broker", "--json", "--watch", "--timeout"):
        assert option in proc.stdout


def test_the_pipeline_line_shows_tokens_per_deal() -> None:
    state = {
        "tokens": {"now": 10, "spent": 900},
        "pipeline": {
            "candidates_waiting": 40,
            "deals_live": 12,
            "deals_committed": 3,
            "rejections": {"rank": 5, "price": 2},
        },
        "workers": [],
    }
    text = format_status(state)
    line = next(x for x in text.splitlines() if x.startswith("pipeline"))
    assert "tokens per deal committed 300.0" in line
    assert "rejections 7 (price: 2, rank: 5)" in line
    assert "candidates waiting 40" in line
