"""Helpers of the worker-runtime tests: a fake broker (a ROUTER the test drives, every
receive with a deadline), fake Keepa responses and a link + permit client pair."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from common import protocol
from common.keepa import KeepaResponse, TokenEnvelope
from workers.link import BrokerLink
from workers.permit_client import BrokerPermitClient

M = TypeVar("M", bound=protocol.Message)

RECV_TIMEOUT_S = 10.0


def envelope(consumed: int = 5, tokens_left: int = 100) -> TokenEnvelope:
    return TokenEnvelope(
        timestamp_ms=1_700_000_000_000,
        tokens_left=tokens_left,
        refill_in_ms=30_000,
        refill_rate=20,
        tokens_consumed=consumed,
        processing_time_ms=12,
    )


def response(consumed: int = 5) -> KeepaResponse:
    return KeepaResponse(status=200, envelope=envelope(consumed), payload={}, elapsed_s=0.01)


def make_client(
    address: str,
    *,
    worker_id: str = "w-test",
    reconnect_max_s: float = 0.5,
    grant_wait_s: float = 10.0,
    on_kill: Callable[[str], None] | None = None,
) -> tuple[BrokerLink, BrokerPermitClient, threading.Event]:
    link = BrokerLink(
        address,
        worker_id=worker_id,
        role="all",
        heartbeat_s=0.1,
        liveness=5,
        reconnect_max_s=reconnect_max_s,
        on_kill=on_kill,
    )
    stop = threading.Event()
    client = BrokerPermitClient(link, stop=stop, grant_wait_s=grant_wait_s)
    return link, client, stop


class CallThread:
    """``client.call(...)`` in a thread (the work loop), with its outcome."""

    def __init__(self, target: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._target = target
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self._target()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def join(self, timeout: float = RECV_TIMEOUT_S) -> None:
        assert self.done.wait(timeout), "the call did not end in time"
