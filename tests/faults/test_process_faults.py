"""Process faults on one running fleet (simulator, broker, three workers, token-bound): a
worker SIGKILLed while holding a permit, several SIGKILLed at random, one SIGSTOPped, one
whose work loop hangs, the database locked, and the broker SIGKILLed under load. After each
case every invariant of ``faults.scenarios`` is checked and the fleet must be working again
within the case's stated bound."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from faults import scenarios
from fleet import Fleet

pytestmark = pytest.mark.e2e

Record = Callable[[dict[str, Any]], None]


def test_sigkill_a_worker_holding_a_permit(fleet: Fleet, record: Record) -> None:
    figures = scenarios.sigkill_permit_holder(fleet)
    record(figures)
    assert figures["lease_expired_s"] <= scenarios.EXPIRY_BOUND_S


def test_sigkill_several_workers_at_random(fleet: Fleet, record: Record) -> None:
    record(scenarios.sigkill_several(fleet, seed=20240611))


def test_sigstopped_worker_is_killed_and_replaced(fleet: Fleet, record: Record) -> None:
    record(scenarios.sigstop(fleet, "w1"))


def test_hung_work_loop_is_found_stalled_and_killed(fleet: Fleet, record: Record) -> None:
    record(scenarios.stalled(fleet, "w2"))


def test_database_locked_by_a_long_reader_and_a_long_writer(fleet: Fleet, record: Record) -> None:
    record(scenarios.database_locked(fleet))


def test_broker_sigkilled_under_load_and_started_again(fleet: Fleet, record: Record) -> None:
    record(scenarios.broker_restart(fleet))
