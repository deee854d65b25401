"""``workers.storage_gate`` on a real SQLite file: a write of paid-for data that fails on the
storage is held (in memory, in order) and lands once the storage takes writes again; no
permit while blocked; a probe when no write is recent; backoff capped; other errors raised."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.errors import StorageBlocked, StorageUnavailable
from common.storage import Rejection, Storage
from workers.runtime import WorkerRuntime
from workers.storage_gate import RETRY_MAX_S, GatedStorage, StorageGate, gate_storage

NOW = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    s = Storage.open(tmp_path / "fleet.db")
    try:
        yield s
    finally:
        s.close()


def rejections(n: int, prefix: str = "B") -> list[Rejection]:
    return [Rejection(f"{prefix}{i:09d}", "price", "price", {"x": "y" * 2000}) for i in range(n)]


def make(storage: Storage, tmp_path: Path) -> tuple[StorageGate, GatedStorage, Path, Clock]:
    flag = tmp_path / "fault"
    clock = Clock()
    reports: list[dict[str, Any]] = []
    gate = StorageGate(storage, report=reports.append, clock=clock, fault_file=str(flag))
    gate.reports = reports  # type: ignore[attr-defined]
    return gate, GatedStorage(storage, gate), flag, clock


def test_a_failed_write_is_held_blocks_permits_and_lands_when_space_is_back(
    storage: Storage, tmp_path: Path
) -> None:
    gate, gated, flag, clock = make(storage, tmp_path)
    storage.add_candidates(1, [r.asin for r in rejections(40)], source="t", now=NOW)
    flag.write_text("full")
    # 40 rejections with a large detail need new pages: SQLITE_FULL. Held, not raised.
    assert gated.reject_candidates(1, rejections(40), NOW) == 40
    assert gate.blocked and gate.problem == "disk_full" and len(gate.held) == 1
    snap = gate.snapshot(clock.now)
    assert snap["problem"] == "disk_full" and snap["held"] == 1 and "full" in snap["detail"]
    assert gate.reports[-1]["problem"] == "disk_full"  # type: ignore[attr-defined]
    with pytest.raises(StorageBlocked):
        gate.ready()
    # A later write queues behind the held one (order kept), without touching the database.
    assert gated.commit_deals(1, [], NOW) == 0
    assert storage.totals(NOW).get("rejections", 0) == 0
    assert not gate.recover(clock.now)  # the backoff has not passed
    clock.now += 5
    assert not gate.recover(clock.now)  # still full
    flag.unlink()
    clock.now += 5
    assert gate.recover(clock.now)
    assert not gate.blocked and gate.snapshot(clock.now) == {}
    assert gate.reports[-1] == {}  # type: ignore[attr-defined]
    n = storage.conn.execute("select count(*) from rejections").fetchone()[0]
    assert n == 40
    assert storage.conn.execute("select count(*) from candidates").fetchone()[0] == 0
    gate.ready()  # writable: a permit may be asked for


def test_ready_probes_when_no_write_is_recent(storage: Storage, tmp_path: Path) -> None:
    gate, _, flag, clock = make(storage, tmp_path)
    flag.write_text("readonly")
    with pytest.raises(StorageBlocked, match="read_only"):
        gate.ready()
    flag.unlink()
    with pytest.raises(StorageBlocked):
        gate.ready()  # blocked until the work loop's recover() has proved it
    clock.now += RETRY_MAX_S
    assert gate.recover(clock.now)
    gate.ready()
    assert storage.get_state("storage_probe") == {"at": clock.now}


def test_the_retry_backoff_doubles_and_is_capped(storage: Storage, tmp_path: Path) -> None:
    gate, gated, flag, clock = make(storage, tmp_path)
    flag.write_text("readonly")
    gated.set_state("k", 1, NOW)
    waits = []
    for _ in range(8):
        waits.append(gate.retry_in_s(clock.now))
        clock.now += waits[-1]
        assert not gate.recover(clock.now)
    assert waits[:4] == [0.25, 0.5, 1.0, 2.0] and max(waits) == RETRY_MAX_S


def test_errors_that_are_not_the_storages_are_raised_and_not_held(
    storage: Storage, tmp_path: Path
) -> None:
    gate, gated, _, _ = make(storage, tmp_path)
    with pytest.raises(TypeError):
        gated.set_state("k", object(), NOW)  # cannot be stored: a bug, not the disk
    assert not gate.held


def test_writes_inside_a_callers_transaction_are_not_held(storage: Storage, tmp_path: Path) -> None:
    gate, gated, flag, _ = make(storage, tmp_path)
    flag.write_text("readonly")
    gate.apply_fault()
    with pytest.raises(sqlite3.Error), gated.transaction():
        gated.set_state("k", 1, NOW)
    assert not gate.held


class _FullAtClaim:
    """A stage whose claim raises SQLITE_FULL (the storage's error, as raised by sqlite3)."""

    name = "ingest"

    def __init__(self) -> None:
        self.runs = 0

    def urgency(self, now: float) -> float:
        return 1.0

    def run_once(self, now: float) -> int:
        self.runs += 1
        raise sqlite3.OperationalError("database or disk is full")

    def give_back(self) -> None:
        raise sqlite3.OperationalError("database or disk is full")


def test_the_work_loop_runs_no_stage_while_blocked(
    storage: Storage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from workers.link import BrokerLink
    from workers.permit_client import BrokerPermitClient

    link = BrokerLink("tcp://127.0.0.1:9", worker_id="w", role="all")  # never started
    try:
        permits = BrokerPermitClient(link, stop=threading.Event())
        gate_storage(storage, permits)
        clock = Clock()
        permits.gate.clock = clock
        stage = _FullAtClaim()
        rt = WorkerRuntime([stage], permits, threading.Event(), clock=clock)
        wait = rt.loop_once(clock())
        assert 0 < wait <= RETRY_MAX_S and stage.runs == 1
        assert permits.gate.blocked
        assert link.work.heartbeat().storage["problem"] == "disk_full"
        # The probe succeeds (nothing is really full): the next turn runs the stage again.
        clock.now += RETRY_MAX_S
        rt.loop_once(clock())
        assert stage.runs == 2
        assert "Traceback" not in caplog.text and "the batch failed" not in caplog.text
    finally:
        link.close()


class _NoConnStorage:
    """PostgreSQL's face as far as the gate sees it: no sqlite ``conn.in_transaction``."""

    def __init__(self) -> None:
        self.in_tx = False

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.in_tx = True
        try:
            yield None
        finally:
            self.in_tx = False

    def set_state(self, key: str, value: Any, now: float) -> None:
        raise StorageUnavailable("database server unreachable")


def test_a_write_in_a_transaction_is_never_held_even_without_an_sqlite_connection() -> None:
    gate = StorageGate(_NoConnStorage())
    gated = GatedStorage(_NoConnStorage(), gate)
    with pytest.raises(StorageUnavailable), gated.transaction():
        gated.set_state("k", 1, NOW)
    assert not gate.held
    assert gated.set_state("k", 1, NOW) is None  # outside one: held
    assert len(gate.held) == 1 and gate.problem == "unavailable"


class _LongTurnThenFull:
    """A stage whose turn lasts a minute (a permit wait, a Keepa call), then whose write
    fails on a full disk and whose next permit is refused by the gate."""

    name = "ingest"

    def __init__(self, gate: StorageGate, clock: Clock) -> None:
        self.gate, self.clock = gate, clock

    def urgency(self, now: float) -> float:
        return 1.0

    def run_once(self, now: float) -> int:
        self.clock.now += 60.0

        def full() -> None:
            raise sqlite3.OperationalError("database or disk is full")

        self.gate.write("set_state", full, None)  # held: the gate is blocked from now on
        self.gate.ready()  # raises StorageBlocked
        return 0

    def give_back(self) -> None:
        pass


def test_the_retry_after_a_long_turn_is_timed_from_its_end_not_its_start(
    storage: Storage,
) -> None:
    """A turn started at NOW failed at NOW + 60: the work loop's next try comes within the
    gate's backoff of the failure, not a minute later (asleep that long, the worker would
    be killed as stalled)."""
    from workers.link import BrokerLink
    from workers.permit_client import BrokerPermitClient

    link = BrokerLink("tcp://127.0.0.1:9", worker_id="w", role="all")  # never started
    try:
        clock = Clock()
        permits = BrokerPermitClient(link, stop=threading.Event())
        gate_storage(storage, permits)
        permits.gate.clock = clock
        rt = WorkerRuntime(
            [_LongTurnThenFull(permits.gate, clock)], permits, threading.Event(), clock=clock
        )
        wait = rt.loop_once(clock())
        assert permits.gate.blocked
        assert 0 < wait <= RETRY_MAX_S, wait
    finally:
        link.close()
