"""The settings a second host runs with: a postgresql:// FLEET_DB reaches supervisord as it
is, and ``keepa-fleet run --conf supervisord-workers.conf`` starts the worker-only config."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from support import fleet_command

from common.config import load_settings
from common.run import fleet_environment

ROOT = Path(__file__).resolve().parents[2]
URL = "postgresql://fleet:pw@10.0.0.1:5432/fleet"


def test_a_postgres_url_is_passed_on_unchanged(tmp_path: Path) -> None:
    base = {"FLEET_DB": URL, "FLEET_CONFIG": ""}
    env = fleet_environment(load_settings(env=base), var=str(tmp_path), base=base)
    assert env["FLEET_DB"] == URL
    sqlite = fleet_environment(load_settings(env={}), var=str(tmp_path), base={})
    assert sqlite["FLEET_DB"] == str((tmp_path / "fleet.db").resolve())


def test_run_takes_the_worker_only_config(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "FLEET_CONFIG": "",
        "FLEET_DB": URL,
        "FLEET_BROKER": "tcp://10.0.0.1:5555",
        "FLEET_BROKER_CURVE_DIR": str(tmp_path / "keys"),
    }
    conf = ROOT / "supervisord-workers.conf"
    out = subprocess.run(
        [
            *fleet_command("run", "--conf", str(conf), "--var", str(tmp_path), "--workers", "3"),
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert f"FLEET_DB={URL}" in out.stdout and "FLEET_WORKERS=3" in out.stdout
    assert out.stdout.rstrip().endswith(f"-c {conf}")
    text = conf.read_text()
    assert "%(host_node_name)s_worker_" in text  # ids unique across hosts
    assert "[program:broker]" not in text and "[program:sim]" not in text
