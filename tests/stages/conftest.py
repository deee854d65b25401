"""Fixtures of the pipeline-stage tests: a database in tmp_path and a fake permit client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from stages.stage_support import FakePermits

from common.storage import Storage


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    s = Storage.open(str(tmp_path / "db" / "fleet.db"))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def permits() -> FakePermits:
    return FakePermits()
