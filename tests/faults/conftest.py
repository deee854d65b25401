"""One fleet of real processes per test module (module scope: its cases run one after the
other on it, each leaving it working), and a ``record`` fixture that prints what each case
measured (and appends it to ``$FLEET_FAULT_REPORT`` as JSON lines when that is set)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import scenarios
from fleet import Fleet
from support import Processes


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet")
    procs = Processes(tmp)
    fleet = scenarios.new_fleet(procs, tmp)
    try:
        scenarios.start_fleet(fleet)
        yield fleet
    finally:
        procs.stop_all()


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[[dict[str, Any]], None]:
    def write(figures: dict[str, Any]) -> None:
        line = json.dumps({"case": request.node.name, **figures}, default=str)
        print(line)
        path = os.environ.get("FLEET_FAULT_REPORT")
        if path:
            with Path(path).open("a", encoding="utf-8") as out:
                out.write(line + "\n")

    return write
