"""The suite's own rules and helpers: the port helpers of tests/support.py do what they say,
and no test goes back to what issue 18 removed (a port picked then released from support, a
port assumed closed, an import error of our own turned into a skip)."""

from __future__ import annotations

import re
import socket
import sys
import time
from pathlib import Path

import pytest
import zmq
from support import (
    BindRace,
    ChildExited,
    Processes,
    bind_any_port,
    logged,
    refused_port,
    retry_bind_race,
)

TESTS = Path(__file__).resolve().parent.parent
OWN_PACKAGES = ("broker", "common", "gateway", "sim", "web", "workers")


def test_logged_returns_what_the_child_reports(processes: Processes) -> None:
    proc = processes.start(
        "child", [sys.executable, "-c", "import time; print('bound port 4321'); time.sleep(30)"]
    )
    assert logged(processes, "child", proc, r"bound port (\d+)") == "4321"


def test_logged_fails_at_once_when_the_child_exits_without_reporting(
    processes: Processes,
) -> None:
    proc = processes.start("child", [sys.executable, "-c", "print('cannot bind'); exit(1)"])
    started = time.monotonic()
    with pytest.raises(ChildExited, match="cannot bind"):
        logged(processes, "child", proc, r"bound port (\d+)", timeout=120)
    assert time.monotonic() - started < 60  # long before the 120 s timeout


def test_retry_bind_race_starts_again_only_on_a_race() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise BindRace("taken")
        return "up"

    assert retry_bind_race(flaky) == "up" and len(calls) == 3
    calls.clear()

    def always() -> str:
        calls.append(1)
        raise BindRace("taken")

    with pytest.raises(BindRace):
        retry_bind_race(always, attempts=4)
    assert len(calls) == 4

    def broken() -> str:
        calls.append(1)
        raise ValueError("not a race")

    calls.clear()
    with pytest.raises(ValueError):
        retry_bind_race(broken)
    assert len(calls) == 1


def test_a_refused_port_refuses_for_as_long_as_it_is_held() -> None:
    with refused_port() as port, pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_bind_any_port_reports_the_port_it_got() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = ctx.socket(zmq.ROUTER)
        address = bind_any_port(sock)
        assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", address) and not address.endswith(":0")
        sock.close(0)
    finally:
        ctx.destroy(0)


# --- rules over the suite's source -----------------------------------------------------------

RULES = {
    "a port picked and released (support.free_port is gone: bind port 0, or retry_bind_race)": (
        r"from support import[^\n]*\bfree_port\b|support\.free_port\("
    ),
    # (a link made and never started, saying so on its line, assumes nothing)
    "a port assumed closed (use refused_port())": r"^(?!.*never).*127\.0\.0\.1:(9|1)\b(?![\d.])",
    "importorskip on our own modules (an import error must fail)": (
        r"importor" r"skip\(\s*[\"'](" + "|".join(OWN_PACKAGES) + r")\b"
    ),
}


def broken_rules(text: str) -> list[str]:
    return [rule for rule, pattern in RULES.items() if re.search(pattern, text, re.MULTILINE)]


def test_the_rules_catch_what_they_name() -> None:
    picked, closed, skipped = RULES
    assert broken_rules("from support import Processes, free_port\n") == [picked]
    assert broken_rules('url = "http://127.0.0.1:9"\n') == [closed]
    assert broken_rules('KeepaClient("http://127.0.0.1:1", KEY)') == [closed]
    skip = "pytest.importor" + "skip"  # (spelt apart: this file is scanned by the same rules)
    assert broken_rules(skip + '("sim.server")') == [skipped]
    assert broken_rules(skip + '("keepa")\nurl = "http://127.0.0.1:8080"') == []
    assert broken_rules('"tcp://127.0.0.1:1234"; "127.0.0.1:90"') == []
    assert broken_rules('BrokerLink("tcp://127.0.0.1:9")  # never started') == []


def test_no_test_breaks_the_rules() -> None:
    found = {
        str(path.relative_to(TESTS)): rules
        for path in sorted(TESTS.rglob("*.py"))
        if path != Path(__file__).resolve() and (rules := broken_rules(path.read_text()))
    }
    assert not found, found
