"""Helpers shared by every test tier: ports, waiting on conditions, owned subprocesses.

Nothing here sleeps in place of a condition: ``wait_until`` polls a predicate until a deadline
and fails with a message when the deadline passes.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import zmq

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


# How a child that bound port 0 reports what it got, in its log (INFO).
SIM_URL_LOGGED = r"simulated Keepa API on (http://[^\s:]+:\d+)"
BROKER_ADDRESS_LOGGED = r"broker \S+ listening on (tcp://\S+:\d+)"
METRICS_PORT_LOGGED = r"Prometheus metrics on http://[^\s:]+:(\d+)/"
# A broker whose bind failed exits with this (broker.cli EXIT_CANNOT_BIND).
EXIT_CANNOT_BIND = 1


class ChildExited(AssertionError):
    """A child process ended before it reported what the test waits for."""


def logged(
    processes: Processes,
    name: str,
    proc: subprocess.Popen[bytes],
    pattern: str,
    timeout: float = 30.0,
) -> str:
    """The first group of ``pattern`` in child ``name``'s log, as soon as it appears: how a
    server started on port 0 tells the test the port it bound (no port picked beforehand).
    Fails at once if the child exits first, and after ``timeout`` seconds."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        found = rx.search(processes.log(name))
        if found:
            return found.group(1)
        if proc.poll() is not None:
            found = rx.search(processes.log(name))  # it may have written it, then exited
            if found:
                return found.group(1)
            raise ChildExited(
                f"{name} exited ({proc.returncode}) before logging /{pattern}/:\n"
                f"{processes.log(name)[-3000:]}"
            )
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"{name} logged no /{pattern}/ within {timeout}s:\n{processes.log(name)[-3000:]}"
            )
        time.sleep(0.02)


def retry_bind_race(start: Callable[[], T], *, attempts: int = 5) -> T:
    """``start()`` again when it fails with ``BindRace``: for a server that must be told its
    port in advance (a broker restarted on the address its workers know, a metrics port that
    cannot be 0). The port is released by the test only so the child can bind it; losing it
    to another process in between is a race, and this handles it by starting again."""
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except BindRace:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


class BindRace(AssertionError):
    """The port a test chose was taken by someone else before its server bound it."""


def bind_any_port(sock: Any, host: str = "127.0.0.1") -> str:
    """Bind a ZeroMQ socket to any free port of ``host`` (``tcp://HOST:*``) and return the
    address it got."""
    sock.bind(f"tcp://{host}:*")
    endpoint = sock.getsockopt(zmq.LAST_ENDPOINT)
    return endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)


def unused_port() -> int:
    """A TCP port on 127.0.0.1 nobody listened on a moment ago. Only for a server that cannot
    bind port 0 and report its port: start it through ``retry_bind_race`` (which handles the
    port being taken in between); a test that needs a closed port uses ``refused_port()``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections for as long as the block runs: this
    process holds it bound without listening, so nobody else can listen there (no port is
    assumed closed, and none is picked and then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts TCP connections in the kernel and never answers:
    a listening socket this process never ``accept()``s on, held for the block."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.02,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds.

    Exceptions raised by the predicate count as "not yet" until the deadline, then re-raise.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last_exc = None
        except Exception as exc:  # not ready yet
            last_exc = exc
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            if last_exc is not None:
                raise AssertionError(f"timed out after {timeout}s waiting for {text}") from last_exc
            raise AssertionError(f"timed out after {timeout}s waiting for {text}")
        time.sleep(interval)


def fleet_command(*args: str) -> list[str]:
    """The ``keepa-fleet`` command line, run with this interpreter."""
    return [sys.executable, "-m", "common.cli", *args]


class Processes:
    """Subprocesses a test starts; ``stop_all`` terminates and reaps every one of them."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: Sequence[str], env: dict[str, str] | None = None, **kwargs: Any
    ) -> subprocess.Popen[bytes]:
        full_env = dict(os.environ)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        if env:
            full_env.update(env)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the proc
        proc = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=kwargs.pop("cwd", ROOT),
            start_new_session=True,
            **kwargs,
        )
        log.close()
        self.procs.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self, grace: float = 5.0) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
                _signal_group(proc, signal.SIGCONT)
        deadline = time.monotonic() + grace
        for _, proc in self.procs:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=5)
        self.procs.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
