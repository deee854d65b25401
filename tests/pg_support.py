"""A throw-away PostgreSQL cluster for the tests: ``initdb`` and ``pg_ctl`` from the server's
own binaries (``/usr/lib/postgresql/*/bin``), in a temporary directory, on a free port, removed
at the end. As root (CI) the server runs as the ``postgres`` user through ``runuser``; it
refuses to run as root.

``pg_binaries()`` is None when no server is installed: the PostgreSQL tests then skip with
that message (``make test`` installs one where it can, see the Makefile's ``pg-server``).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import psycopg

SERVER_GLOB = "/usr/lib/postgresql/*/bin"
NO_SERVER = (
    "no PostgreSQL server binaries at /usr/lib/postgresql/*/bin (initdb, pg_ctl): "
    "install PostgreSQL (Debian: apt-get install postgresql; `make pg-server` does it) "
    "to run the PostgreSQL storage tests"
)
START_TIMEOUT_S = 60
SERVER_USER = "postgres"


def pg_binaries() -> Path | None:
    """The newest server bin directory with initdb and pg_ctl, or None."""
    found = sorted(
        (Path(d) for d in glob.glob(SERVER_GLOB) if (Path(d) / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found and (found[-1] / "pg_ctl").exists() else None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class PgCluster:
    """One cluster: ``start()``, ``new_database()`` per test, ``stop()`` removes it all.

    ``prefix`` runs the server's commands inside something (``ip netns exec NS``): the
    two-host test starts it in host A's namespace, listening on ``host``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        prefix: Sequence[str] = (),
        hba_networks: Sequence[str] = (),
    ) -> None:
        bindir = pg_binaries()
        if bindir is None:
            raise RuntimeError(NO_SERVER)
        self.bindir = bindir
        self.host = host
        self.port = port if port is not None else free_port(host if not prefix else "127.0.0.1")
        self.prefix = list(prefix)
        self.hba_networks = list(hba_networks)
        self.root = Path(tempfile.mkdtemp(prefix="keepa-fleet-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._names = itertools.count(1)
        self.started = False

    # --- the server ---------------------------------------------------------------------

    def _as_server_user(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return [*self.prefix, "runuser", "-u", SERVER_USER, "--", *argv]
        return [*self.prefix, *argv]

    def start(self) -> PgCluster:
        if os.geteuid() == 0:
            pw = pwd.getpwnam(SERVER_USER)
            os.chmod(self.root, 0o755)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ]
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '{self.host}'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 100\nshared_buffers = 32MB\n"
            )
        if self.hba_networks:
            with (self.data / "pg_hba.conf").open("a") as hba:
                for net in self.hba_networks:
                    hba.write(f"host all all {net} trust\n")
        self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "start",
            ]
        )
        self.started = True
        return self

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(
            self._as_server_user(argv),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S + 30,
            cwd=self.root,
        )
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(argv[:1])} failed ({done.returncode}): {done.stderr.strip()}\n{log}"
            )

    def stop_server(self) -> None:
        """Stop the server only (its data stays): the outage tests. ``start_again()``."""
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                   "-t", "30", "stop"])  # fmt: skip
        self.started = False

    def start_again(self) -> None:
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                   "-w", "-t", str(START_TIMEOUT_S), "start"])  # fmt: skip
        self.started = True

    def stop(self) -> None:
        """Stop the server (fast, then immediate) and remove its directory."""
        if self.started:
            for mode in ("fast", "immediate"):
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode,
                               "-w", "-t", "20", "stop"])  # fmt: skip
                    break
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    # --- databases ----------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{dbname}"

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url(), autocommit=True, connect_timeout=10)

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        name = f"fleet_{os.getpid()}_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
