"""The webhook notifier against a real local HTTP receiver: each deal once, in order, also
after the receiver was down a while; a receiver that never answers delays no submit."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from workers.notify import FAILING, OK, Notifier, payload

DEADLINE_S = 30.0


class Receiver:
    def __init__(self, port: int = 0) -> None:
        self.got: list[dict[str, Any]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(cond: Callable[[], bool]) -> None:
    end = time.monotonic() + DEADLINE_S
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.02)


def deal(i: int) -> dict[str, Any]:
    return {
        "asin": f"B00000000{i}",
        "title": f"t{i}",
        "current": 1000,
        "profit": 500,
        "drop_percent": 30.0,
        "query": "q",
    }


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def test_each_deal_once_and_again_after_the_receiver_was_down(receiver: Receiver) -> None:
    counts: list[tuple[str, str]] = []
    n = Notifier(
        f"http://127.0.0.1:{receiver.port}/hook",
        backoff_min_s=0.05,
        backoff_max_s=0.2,
        count=lambda q, name, k: counts.append((q, name)),
    )
    try:
        for i in range(3):
            n.submit(payload("q", 2, deal(i), 0.0))
        wait_for(lambda: len(receiver.got) == 3)
        assert [g["asin"] for g in receiver.got] == [f"B00000000{i}" for i in range(3)]
        assert receiver.got[0]["links"]["amazon"] == "https://www.amazon.co.uk/dp/B000000000"
        assert receiver.got[0]["currency"] == "GBP"
        port = receiver.port
        receiver.stop()  # down
        for i in range(3, 6):
            n.submit(payload("q", 2, deal(i), 0.0))
        wait_for(lambda: n.state == FAILING and n.failed >= 3)
        back = Receiver(port)  # up again on the same port
        try:
            wait_for(lambda: len(back.got) == 3)
            assert [g["asin"] for g in back.got] == [f"B00000000{i}" for i in range(3, 6)]
            # The receiver holds a body before the notifier has read the answer and counted it.
            wait_for(lambda: n.state == OK and n.sent == 6)
            assert ("q", "notify_failed") in counts
        finally:
            back.stop()
    finally:
        n.close()


def test_a_receiver_that_never_answers_slows_nothing() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(100)  # accepts connections, never answers
    n = Notifier(f"http://127.0.0.1:{silent.getsockname()[1]}/", timeout_s=2.0)
    try:
        started = time.monotonic()
        for i in range(1000):
            n.submit(payload("q", 1, deal(i % 10), 0.0))
        assert time.monotonic() - started < 1.0  # submits never wait on the network
        wait_for(lambda: n.failed >= 1)
        assert n.sent == 0 and n.pending() >= 999
    finally:
        n.close(timeout_s=3.0)
        silent.close()
