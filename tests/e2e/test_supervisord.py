"""The real supervisord runs the fleet from the checkout's supervisord.conf in a temporary
directory: deals land, a SIGSTOPped worker is killed by the broker and restarted by
supervisord, a worker added by hand gets grants, and shutdown leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from support import (
    ROOT,
    BindRace,
    Processes,
    fleet_command,
    retry_bind_race,
    unused_port,
    wait_until,
)

from common.config import load_settings
from common.run import fleet_environment

pytestmark = pytest.mark.e2e


def status(env: dict[str, str]) -> dict[str, Any] | None:
    proc = subprocess.run(
        fleet_command("status", "--json", "--timeout", "2"),
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=ROOT,
    )
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def worker_entry(state: dict[str, Any] | None, worker_id: str) -> dict[str, Any] | None:
    for w in (state or {}).get("workers", []):
        if w["id"] == worker_id and w["state"] in ("alive", "waiting"):
            return w
    return None


def deals_in(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=5) as conn:
        try:
            return int(conn.execute("select count(*) from deals").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def fleet_pids(var: Path) -> list[int]:
    """Processes whose environment names this test's FLEET_VAR: what must be gone at the end."""
    marker = f"FLEET_VAR={var}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


BIND_FAILURES = ("Address already in use", "cannot bind", "cannot listen")


def shutdown(conf: str, env: dict[str, str], sup: subprocess.Popen[bytes]) -> None:
    subprocess.run(
        [str(Path(sys.executable).parent / "supervisorctl"), "-c", conf, "shutdown"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    try:
        sup.wait(timeout=60)
    except subprocess.TimeoutExpired:
        sup.kill()


def start_supervised(
    processes: Processes, var: Path, conf: str
) -> tuple[dict[str, str], Any, str, subprocess.Popen[bytes]]:
    """supervisord with the fleet on ports chosen now: supervisord's programs are told their
    ports (the simulator's, the broker's, the metrics one), so each was free a moment ago and
    a program that loses its port to another process is a bind race: shut down, raise
    BindRace (``retry_bind_race`` starts again on other ports)."""
    broker = f"tcp://127.0.0.1:{unused_port()}"
    base = dict(os.environ)
    base.update(
        {
            "FLEET_BROKER": broker,
            "FLEET_SIM_PORT": str(unused_port()),
            "FLEET_GATEWAY_LISTEN": f"127.0.0.1:{unused_port()}",  # issue 14
            "FLEET_DB": str(var / "fleet.db"),
            "KEEPA_REFILL_PERIOD_S": "0.5",
            "FLEET_SIM_REFILL_RATE": "200",
            "FLEET_SIM_LATENCY_SCALE": "0.02",
            "FLEET_BROKER_HEARTBEAT_S": "0.2",
            "FLEET_BROKER_LIVENESS": "5",
            "FLEET_BROKER_KILL_GRACE_S": "1",
            "FLEET_BROKER_SYNC_MIN_INTERVAL_S": "0.2",
            "FLEET_BROKER_SHORT_WAIT_S": "1",
            "FLEET_BROKER_METRICS_PORT": str(unused_port()),
            "FLEET_WEB_LISTEN": f"127.0.0.1:{unused_port()}",  # the dashboard (issue 15)
            "FLEET_WORKER_DEALS_INTERVAL_S": "1",
            "FLEET_WORKER_RECONNECT_MAX_S": "1",
            "PYTHONPATH": str(ROOT),
        }
    )
    base.pop("KEEPA_API_KEY", None)
    base.pop("KEEPA_BASE_URL", None)
    settings = load_settings(env=base)
    env = fleet_environment(settings, workers=3, var=str(var), every=1, base=base)
    supervisord = str(Path(sys.executable).parent / "supervisord")
    sup = processes.start("supervisord", [supervisord, "-n", "-c", conf], env=env)

    def lost_a_port() -> bool:
        logs = var / "log"
        return logs.exists() and any(
            failure in path.read_text(errors="replace")
            for path in logs.glob("*.log")
            for failure in BIND_FAILURES
        )

    def up() -> bool:
        if lost_a_port():
            return True
        return (
            status(env) is not None
            and requests.get(
                f"http://127.0.0.1:{env['FLEET_SIM_PORT']}/token",
                params={"key": settings.api_key},
                timeout=2,
            ).ok
        )

    wait_until(up, 40, interval=0.5, message="the broker and the simulator answering")
    if lost_a_port():
        shutdown(conf, env, sup)
        for path in (var / "log").glob("*.log"):
            path.unlink()
        raise BindRace("a port chosen for supervisord's programs was taken")
    return env, settings, broker, sup


def test_fleet_under_supervisord(tmp_path: Path, processes: Processes) -> None:
    var = tmp_path / "var"
    conf = str(ROOT / "supervisord.conf")
    env, settings, broker, sup = retry_bind_race(lambda: start_supervised(processes, var, conf))
    try:
        # All three workers register and deals land in SQLite.
        wait_until(
            lambda: all(worker_entry(status(env), f"worker_{i:02d}") for i in range(3)),
            40,
            interval=0.5,
            message="three workers registered",
        )
        wait_until(
            lambda: deals_in(var / "fleet.db") > 0,
            60,
            interval=0.5,
            message=lambda: f"deals in SQLite; broker log:\n{_tail(var, 'broker.log')}",
        )

        # SIGSTOP one worker: the broker kills it, supervisord starts a new one.
        victim = worker_entry(status(env), "worker_01")
        assert victim is not None
        os.kill(victim["pid"], signal.SIGSTOP)

        def replaced() -> bool:
            state = status(env)
            new = worker_entry(state, "worker_01")
            killed = any(k["worker"] == "worker_01" for k in (state or {}).get("kills", []))
            return killed and new is not None and new["pid"] != victim["pid"]

        wait_until(replaced, 40, interval=0.5, message="worker_01 killed and replaced")
        wait_until(
            lambda: not Path(f"/proc/{victim['pid']}").exists(),
            10,
            message="the stopped worker's process gone",
        )
        kill = next(k for k in status(env)["kills"] if k["worker"] == "worker_01")  # type: ignore[index]
        assert kill["reason"] in ("silent", "stalled")

        # A worker added by hand joins without restarting anything and receives grants.
        processes.start(
            "extra",
            fleet_command(
                "worker", "--id", "extra", "--broker", broker, "--db", str(var / "fleet.db")
            ),
            env=env,
        )
        wait_until(
            lambda: (worker_entry(status(env), "extra") or {}).get("tokens_spent", 0) > 0,
            40,
            interval=0.5,
            message="the extra worker spends tokens under permits",
        )

        # The metrics port answers.
        metrics = requests.get(
            f"http://127.0.0.1:{env['FLEET_BROKER_METRICS_PORT']}/metrics", timeout=5
        ).text
        assert "keepa_fleet_permits_granted" in metrics

        # The dashboard (the web program) shows the deals and the fleet.
        web = f"http://{env['FLEET_WEB_LISTEN']}"
        wait_until(
            lambda: (
                'class="deal"' in requests.get(f"{web}/deals", timeout=5).text
                and requests.get(f"{web}/api/fleet", timeout=5).json()["answered"]
            ),
            30,
            interval=0.5,
            message=lambda: f"the dashboard live; its log:\n{_tail(var, 'web.log')}",
        )

        # The simulator saw no 429 caused by the fleet.
        sim = requests.get(
            f"http://127.0.0.1:{env['FLEET_SIM_PORT']}/_sim/state",
            params={"key": settings.api_key},
            timeout=5,
        ).json()
        assert sim["status_429"] == 0
        # The shipped configuration kept to Keepa's documented 20 ASINs per offer call (this
        # simulator runs without --strict-offer-cap: it counts, it does not refuse).
        assert 1 <= sim["max_offer_asins"] <= 20, sim["max_offer_asins"]
    finally:
        shutdown(conf, env, sup)
    processes.stop_all()
    wait_until(
        lambda: not fleet_pids(var),
        20,
        interval=0.2,
        message=lambda: f"no fleet process left, still: {fleet_pids(var)}",
    )
    assert not (var / "supervisord.pid").exists()


def _tail(var: Path, name: str, lines: int = 40) -> str:
    path = var / "log" / name
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
