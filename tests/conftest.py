from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Processes


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Start subprocesses with ``processes.start(name, argv)``; all are stopped afterwards."""
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()
