"""`keepa-fleet run` and the web program: the environment names the dashboard's address,
the first lines print it, and `keepa-fleet web` refuses what it cannot honour."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT, fleet_command

from common.config import load_settings
from common.run import DEFAULT_WEB_LISTEN, fleet_environment, web_url


def test_run_sets_and_prints_the_dashboard_address(tmp_path: Path) -> None:
    settings = load_settings(env={})
    env = fleet_environment(settings, var=str(tmp_path), base={})
    assert env["FLEET_WEB_LISTEN"] == DEFAULT_WEB_LISTEN
    env = fleet_environment(settings, var=str(tmp_path), base={"FLEET_WEB_LISTEN": "0.0.0.0:9999"})
    assert env["FLEET_WEB_LISTEN"] == "0.0.0.0:9999"
    assert web_url("127.0.0.1:8080") == "http://127.0.0.1:8080/"
    assert web_url("0.0.0.0:9999") == "http://127.0.0.1:9999/"
    assert web_url("[::1]:81") == "http://[::1]:81/"
    conf = (ROOT / "supervisord.conf").read_text()
    assert "[program:web]" in conf and "web --listen %(ENV_FLEET_WEB_LISTEN)s" in conf


def test_run_prints_the_address_in_its_first_lines(tmp_path: Path) -> None:
    # A fake supervisord that exits at once: run's own lines are all that is printed.
    fake = tmp_path / "bin"
    fake.mkdir()
    stub = fake / "supervisord"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}",
        "FLEET_WEB_LISTEN": "127.0.0.1:18123",
        # The copy below is not the venv's interpreter: give it the venv's packages.
        "PYTHONPATH": os.pathsep.join([str(ROOT), *(p for p in sys.path if "site-packages" in p)]),
    }
    env.pop("KEEPA_API_KEY", None)
    # sys.executable's own supervisord is preferred by run: point it at a copy of python
    # in a directory holding the stub instead.
    (fake / "python").symlink_to(sys.executable)
    out = subprocess.run(
        [str(fake / "python"), "-m", "common.cli", "run", "--var", str(tmp_path / "var")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    first = out.stdout.splitlines()[:3]
    assert any("dashboard at http://127.0.0.1:18123/" in line for line in first), out


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--listen", "nonsense"], "is not HOST:PORT"),
        (["--db", "postgresql://u@h/db"], "reads an SQLite file"),
        (["--db", "mysql://x"], "not supported"),
        (["--allow-actions"], "FLEET_WEB_TOKEN"),
    ],
)
def test_web_refuses_bad_settings(args: list[str], says: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FLEET_WEB_TOKEN", None)
    out = subprocess.run(
        fleet_command("web", *args), env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 78, out
    assert says in out.stderr
