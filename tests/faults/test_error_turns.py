"""Found by the soak: a Keepa call that times out, then the error backoff after it, left the
progress counter frozen, and a busy, healthy worker was killed as stalled. Every turn of the
work loop that ends, failed or not, is progress; a hung loop still is not (``stalled`` in
``test_process_faults``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from common.errors import (
    BrokerUnavailable,
    KeepaTimeout,
    PermitRejected,
    PermitTimeout,
)
from workers.link import BrokerLink
from workers.permit_client import BrokerPermitClient
from workers.runtime import WorkerRuntime

NOW = 1_700_000_000.0


class FailingStage:
    name = "ingest"

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def urgency(self, now: float) -> float:
        return 1.0

    def run_once(self, now: float) -> int:
        raise self.error

    def give_back(self) -> None:
        pass


@pytest.fixture
def client() -> Iterator[BrokerPermitClient]:
    link = BrokerLink("tcp://127.0.0.1:9", worker_id="w", role="all")  # never started
    try:
        yield BrokerPermitClient(link, stop=threading.Event())
    finally:
        link.close()


@pytest.mark.parametrize(
    "error",
    [
        KeepaTimeout("/product: no answer within 3.0 s"),
        PermitRejected("too_large", 600),
        PermitTimeout("no grant"),
        BrokerUnavailable("gone"),
        RuntimeError("a bug"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_failed_turn_advances_progress(client: BrokerPermitClient, error: Exception) -> None:
    rt = WorkerRuntime([FailingStage(error)], client, threading.Event())
    before = client.link.work.heartbeat().progress
    rt.loop_once(NOW)
    rt.loop_once(NOW)
    hb = client.link.work.heartbeat()
    assert (hb.progress - before, hb.stage, hb.items_done) == (2, "ingest", 0)
