"""The work loop one turn at a time with fake stages (no sockets), then serve() with a fake
broker: stage choice, idle turns, errors at the loop boundary, drain and the drain limit."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest
from doubles import FakeBroker
from support import wait_until
from workers_runtime.conftest import Connected
from workers_runtime.wr_support import CallThread, make_client

from common import protocol
from common.errors import BrokerUnavailable, PermitRejected, PermitTimeout
from workers.permit_client import BrokerPermitClient
from workers.runtime import (
    ERROR_BACKOFF_MAX_S,
    ERROR_BACKOFF_MIN_S,
    EXIT_DRAIN_LIMIT,
    EXIT_OK,
    IDLE_STAGE,
    WorkerRuntime,
)

NOW = 1_700_000_000.0


class FakeStage:
    def __init__(
        self, name: str, urgency: float = 1.0, *, raises: BaseException | None = None
    ) -> None:
        self.name = name
        self.level = urgency
        self.raises = raises
        self.runs = 0
        self.given_back = 0
        self.release: threading.Event | None = None  # run_once blocks on it when set
        self.running = threading.Event()

    def urgency(self, now: float) -> float:
        return self.level

    def run_once(self, now: float) -> int:
        self.runs += 1
        self.running.set()
        if self.release is not None:
            assert self.release.wait(20), "never released"
        if self.raises is not None:
            raise self.raises
        return 2

    def give_back(self) -> None:
        self.given_back += 1


@pytest.fixture
def client() -> Iterator[BrokerPermitClient]:
    link, client, _ = make_client("tcp://127.0.0.1:9")  # never started: no socket
    try:
        yield client
    finally:
        link.close()


def runtime(client: BrokerPermitClient, *stages: FakeStage) -> WorkerRuntime:
    return WorkerRuntime(list(stages), client, threading.Event(), idle_wait_s=0.7)


def test_the_most_urgent_stage_runs(client: BrokerPermitClient) -> None:
    deals, ingest, refresh = FakeStage("deals", 0.5), FakeStage("ingest", 2.0), FakeStage("r", 0)
    rt = runtime(client, deals, ingest, refresh)
    assert rt.loop_once(NOW) == 0.0
    assert (deals.runs, ingest.runs, refresh.runs) == (0, 1, 0)
    hb = client.link.work.heartbeat()
    assert (hb.progress, hb.stage) == (1, "ingest")  # a finished turn is progress


def test_nothing_to_do_waits_and_counts_as_progress(client: BrokerPermitClient) -> None:
    stages = [FakeStage("deals", 0), FakeStage("ingest", 0)]
    rt = runtime(client, *stages)
    assert rt.loop_once(NOW) == 0.7
    assert rt.loop_once(NOW) == 0.7
    assert [s.runs for s in stages] == [0, 0]
    hb = client.link.work.heartbeat()
    assert (hb.progress, hb.stage) == (2, IDLE_STAGE)


def test_errors_give_back_and_back_off(
    client: BrokerPermitClient, caplog: pytest.LogCaptureFixture
) -> None:
    stage = FakeStage("ingest", raises=RuntimeError("boom"))
    rt = runtime(client, stage)
    with caplog.at_level(logging.ERROR, logger="workers.runtime"):
        waits = [rt.loop_once(NOW) for _ in range(8)]
    assert waits[:3] == [ERROR_BACKOFF_MIN_S, 2 * ERROR_BACKOFF_MIN_S, 4 * ERROR_BACKOFF_MIN_S]
    assert max(waits) == ERROR_BACKOFF_MAX_S
    assert stage.given_back == 8
    assert any(r.exc_info for r in caplog.records), "logged with the traceback"
    stage.raises = None
    assert rt.loop_once(NOW) == 0.0
    stage.raises = RuntimeError("again")
    assert rt.loop_once(NOW) == ERROR_BACKOFF_MIN_S  # the backoff starts over


@pytest.mark.parametrize(
    ("exc", "wait"),
    [
        (BrokerUnavailable("gone"), 0.0),
        (PermitTimeout("no grant"), 0.0),
        (PermitRejected("too_large", 40), ERROR_BACKOFF_MIN_S),
        (PermitRejected("draining"), ERROR_BACKOFF_MIN_S),
    ],
)
def test_permit_failures(client: BrokerPermitClient, exc: Exception, wait: float) -> None:
    stage = FakeStage("refresh", raises=exc)
    rt = runtime(client, stage)
    assert rt.loop_once(NOW) == wait
    assert stage.given_back == 1


def test_failing_urgency_and_give_back_do_not_end_the_loop(client: BrokerPermitClient) -> None:
    class Broken(FakeStage):
        def urgency(self, now: float) -> float:
            raise OSError("database is locked")

    rt = runtime(client, Broken("deals"))
    assert rt.loop_once(NOW) == ERROR_BACKOFF_MIN_S

    class NoGiveBack(FakeStage):
        def give_back(self) -> None:
            raise OSError("database is locked")

    rt = runtime(client, NoGiveBack("ingest", raises=RuntimeError("x")))
    assert rt.loop_once(NOW) == ERROR_BACKOFF_MIN_S


def test_stop_gives_back_every_stage(client: BrokerPermitClient) -> None:
    stages = [FakeStage("deals"), FakeStage("ingest")]
    rt = runtime(client, *stages)
    rt.stop.set()
    assert rt.serve() == EXIT_OK
    assert [s.given_back for s in stages] == [1, 1]
    assert [s.runs for s in stages] == [0, 0]


def test_no_stage_runs_without_a_broker(
    broker: FakeBroker, caplog: pytest.LogCaptureFixture
) -> None:
    link, client, stop = make_client(broker.address)
    stage = FakeStage("deals")
    rt = WorkerRuntime([stage], client, stop)
    link.start()
    with caplog.at_level(logging.INFO, logger="workers.runtime"):
        serving = CallThread(rt.serve)
        try:
            broker.expect(protocol.Hello)  # no WELCOME
            wait_until(lambda: "waiting for the broker" in caplog.text, 10)
            assert stage.runs == 0
        finally:
            stop.set()
            serving.join()
    assert serving.result == EXIT_OK
    assert stage.runs == 0


def test_serve_runs_until_stop_then_says_bye(connected: Connected) -> None:
    stop = threading.Event()
    client = BrokerPermitClient(connected.link, stop=stop)
    stage = FakeStage("deals")
    rt = WorkerRuntime([stage], client, stop)
    serving = CallThread(rt.serve)
    wait_until(lambda: stage.runs >= 3, 10)
    rt._on_signal(15, None)  # what SIGTERM does
    serving.join()
    assert serving.result == EXIT_OK
    _, bye = connected.broker.expect(protocol.Bye)
    assert bye.reason == "SIGTERM"
    assert stage.given_back == 1


def test_drain_limit_exits_when_the_loop_is_stuck(connected: Connected) -> None:
    stop = threading.Event()
    client = BrokerPermitClient(connected.link, stop=stop)
    stage = FakeStage("ingest")
    stage.release = threading.Event()
    exits: list[int] = []
    rt = WorkerRuntime([stage], client, stop, drain_limit_s=0.3, exit_process=exits.append)
    serving = CallThread(rt.serve)
    try:
        assert stage.running.wait(10)
        stop.set()
        _, bye = connected.broker.expect(protocol.Bye)
        assert bye.reason == "drain limit"
        wait_until(lambda: exits == [EXIT_DRAIN_LIMIT], 10)
    finally:
        stage.release.set()
        serving.join()
