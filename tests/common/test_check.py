"""``keepa-fleet check`` as a real process against the simulator: a working key, an unpaid key
(402) and nothing listening; exit codes 0/1/2; no charged call unless ``--spend``."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest
from support import fleet_command, refused_port

from sim.server import SimServer

KEY = "check-key-000001"


@pytest.fixture
def server() -> Iterator[SimServer]:
    with SimServer(port=0, refill_rate=60) as s:
        yield s


def run_check(url: str, key: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KEEPA_BASE_URL": url, "KEEPA_API_KEY": key}
    env.pop("FLEET_CONFIG", None)
    return subprocess.run(
        fleet_command("check", *extra), env=env, capture_output=True, text=True, timeout=60
    )


def test_working_key_reports_the_plan_and_spends_nothing(server: SimServer) -> None:
    out = run_check(server.url, KEY, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True
    assert report["plan"]["refill_rate"] == 60 and report["plan"]["cap"] == 3600
    assert report["plan"]["balance"] == 3600 and report["plan"]["time_to_full_s"] == 0.0
    assert abs(report["plan"]["clock_offset_s"]) < 5
    assert report["estimates"]["cost"]["deals_page"] == 5
    assert report["estimates"]["per_hour"]["deals_page"] == 60 * 60 // 5  # 60 a minute
    state = server.state(KEY)
    assert state["tokens_consumed"] == 0 and state["requests"] == 1  # /token only
    text = run_check(server.url, KEY)
    assert text.returncode == 0 and "the key works" in text.stdout


def test_spend_makes_one_deal_and_one_product_call(server: SimServer) -> None:
    out = run_check(server.url, KEY, "--json", "--spend")
    assert out.returncode == 0, out.stderr
    spent = json.loads(out.stdout)["spent"]
    assert spent["deals_page"]["tokens"] == 5 and spent["product"]["tokens"] == 1
    assert server.state(KEY)["tokens_consumed"] == 6


def test_unpaid_key_is_refused_with_exit_1(server: SimServer) -> None:
    out = run_check(server.url, "unpaid-key-0001")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "this key has no access" in out.stdout
    report = json.loads(run_check(server.url, "unpaid-key-0001", "--json").stdout)
    assert report["ok"] is False and "plan" not in report
    state = server.state("unpaid-key-0001")
    assert state["requests"] == 2 and state["token_calls"] == 2  # /token only, twice
    assert state["tokens_consumed"] == 0 and state["statuses"] == {"402": 2}


def test_malformed_key_is_refused_with_exit_1(server: SimServer) -> None:
    out = run_check(server.url, "bad key!", "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "malformed" in json.loads(out.stdout)["verdict"]
    assert server.sim.totals()["tokens_consumed"] == 0


def test_keepa_down_is_exit_2_and_spends_nothing(server: SimServer) -> None:
    server.sim.faults.add("503", 1, path="/token")
    out = run_check(server.url, KEY, "--spend")  # even with --spend: nothing after /token
    assert out.returncode == 2, out.stdout + out.stderr
    assert "unreachable" in out.stdout
    state = server.state(KEY)
    assert state["tokens_consumed"] == 0 and state["requests"] == 1


def test_nothing_listening_is_exit_2() -> None:
    with refused_port() as port:
        url = f"http://127.0.0.1:{port}"
        out = run_check(url, KEY, "--json")
        text = run_check(url, KEY)
    assert out.returncode == 2, out.stdout + out.stderr
    assert json.loads(out.stdout)["ok"] is False
    assert text.returncode == 2 and "Keepa is unreachable" in text.stdout
