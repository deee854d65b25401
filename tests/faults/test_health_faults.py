"""Issue 12: no token spent on work that cannot be kept, and every failure says its name.
Storage that stops taking writes (full, read-only), a key whose subscription lapses (402),
Keepa answering 503 for a while, on one running fleet; Keepa down when the fleet starts and
a malformed key (400), each on a fleet of its own. See ``faults.health_scenarios``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import health_scenarios as hs
from faults import scenarios
from fleet import Fleet
from support import Processes, wait_until

pytestmark = pytest.mark.e2e

Record = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("health")
    procs = Processes(tmp)
    fleet = hs.new_fleet(procs, tmp)
    try:
        hs.start(fleet)
        wait_until(lambda: fleet.done() > 0, scenarios.START_BOUND_S, message="pipeline output")
        yield fleet
    finally:
        procs.stop_all()


@pytest.fixture
def own_fleet(tmp_path: Path) -> Iterator[Fleet]:
    procs = Processes(tmp_path)
    try:
        yield hs.new_fleet(procs, tmp_path)
    finally:
        procs.stop_all()


def test_database_full_buys_nothing_and_keeps_what_it_paid_for(
    fleet: Fleet, record: Record
) -> None:
    record(hs.storage_fault(fleet, "full", "disk_full"))


def test_database_read_only_buys_nothing_and_keeps_what_it_paid_for(
    fleet: Fleet, record: Record
) -> None:
    record(hs.storage_fault(fleet, "readonly", "read_only"))


def test_key_without_access_is_named_and_recovers_once_paid(fleet: Fleet, record: Record) -> None:
    record(hs.key_lapses(fleet))


def test_keepa_503_for_a_while(fleet: Fleet, record: Record) -> None:
    record(hs.keepa_503(fleet))


def test_keepa_down_at_start_then_up(own_fleet: Fleet, record: Record) -> None:
    record(hs.keepa_down_at_start(own_fleet))


def test_malformed_key_is_named_and_nothing_granted(own_fleet: Fleet, record: Record) -> None:
    own_fleet.start_sim()
    record(hs.malformed_key(own_fleet))
