"""Keepa faults and strangers on one running fleet: 500s, answers past the client's read
timeout, malformed bodies and dropped connections on every endpoint; a plan change up and
back down with another program spending on the same key in between; and a worker whose
database path cannot be created. Every invariant of ``faults.scenarios`` after each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from faults import scenarios
from fleet import Fleet

pytestmark = pytest.mark.e2e

Record = Callable[[dict[str, Any]], None]


def test_keepa_errors_timeouts_malformed_bodies_and_drops(fleet: Fleet, record: Record) -> None:
    record(scenarios.keepa_faults(fleet))


def test_plan_change_and_another_program_on_the_key(fleet: Fleet, record: Record) -> None:
    record(scenarios.external_and_plan(fleet))


def test_unwritable_database_path_fails_clearly_without_spending(
    fleet: Fleet, record: Record, tmp_path: Path
) -> None:
    record(scenarios.unwritable_database(fleet, tmp_path))
