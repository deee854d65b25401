from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_support import NO_SERVER, PgCluster, pg_binaries
from support import Processes


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Start subprocesses with ``processes.start(name, argv)``; all are stopped afterwards."""
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


# --- PostgreSQL: one throw-away cluster per test session, a fresh database per test ---------


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    if pg_binaries() is None:
        pytest.skip(NO_SERVER)
    cluster = PgCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """The URL of an empty database of the session's cluster, dropped after the test."""
    url = pg_cluster.new_database()
    try:
        yield url
    finally:
        pg_cluster.drop_database(url)
