"""The Keepa client against a scripted HTTP server on a random port: statuses, envelopes,
timeouts, bad bodies, gzip, and that the key never appears in an error or a repr."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from support import refused_port

from common.errors import (
    KeepaBadResponse,
    KeepaConnectionError,
    KeepaError,
    KeepaMethodNotAllowed,
    KeepaNotEnoughTokens,
    KeepaPaymentRequired,
    KeepaRequestRejected,
    KeepaServerError,
    KeepaTimeout,
)
from common.keepa import KeepaClient, TokenEnvelope

KEY = "SECRETKEY1234567890abcdefSECRET"
ENVELOPE = {
    "timestamp": 1_790_000_000_000,
    "tokensLeft": 37,
    "refillIn": 41_000,
    "refillRate": 20,
    "tokenFlowReduction": 0.0,
    "tokensConsumed": 6,
    "processingTimeInMs": 3,
}

Reply = Callable[[BaseHTTPRequestHandler], None]


class Scripted:
    """An HTTP server whose next answer the test chooses; records what it was asked."""

    def __init__(self) -> None:
        self.reply: Reply = lambda h: _json(h, 200, {**ENVELOPE, "products": []})
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                outer.requests.append(
                    {"path": url.path, "query": parse_qs(url.query), "headers": dict(self.headers)}
                )
                outer.reply(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _json(h: BaseHTTPRequestHandler, status: int, body: Any, *, gz: bool = False) -> None:
    data = json.dumps(body).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    if gz:
        data = gzip.compress(data)
        h.send_header("Content-Encoding", "gzip")
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


@pytest.fixture
def server() -> Iterator[Scripted]:
    s = Scripted()
    yield s
    s.close()


def client(server: Scripted, **kw: Any) -> KeepaClient:
    return KeepaClient(server.url, KEY, **kw)


def test_token_returns_the_envelope(server: Scripted) -> None:
    resp = client(server).token()
    assert resp.status == 200
    assert resp.envelope == TokenEnvelope(1_790_000_000_000, 37, 41_000, 20, 0.0, 6, 3)
    assert server.requests[0]["path"] == "/token"
    assert server.requests[0]["query"]["key"] == [KEY]


def test_product_parameters(server: Scripted) -> None:
    client(server).product(
        ["b000000001", "B000000002"],
        domain=3,
        stats=90,
        history=False,
        offers=20,
        update=-1,
        buybox=True,
        rating=True,
    )
    q = server.requests[0]["query"]
    assert server.requests[0]["path"] == "/product"
    assert q["asin"] == ["B000000001,B000000002"]
    assert q["domain"] == ["3"] and q["stats"] == ["90"] and q["history"] == ["0"]
    assert q["offers"] == ["20"] and q["update"] == ["-1"]
    assert q["buybox"] == ["1"] and q["rating"] == ["1"]


def test_product_refuses_more_than_100_asins_before_sending(server: Scripted) -> None:
    with pytest.raises(KeepaRequestRejected) as info:
        client(server).product([f"B{i:09d}" for i in range(101)])
    assert info.value.sent is False
    assert server.requests == []


def test_deal_sends_selection_json(server: Scripted) -> None:
    server.reply = lambda h: _json(h, 200, {**ENVELOPE, "deals": {"dr": [{"asin": "B1"}]}})
    resp = client(server).deal({"page": 0, "domainId": 1, "sortType": 1, "priceTypes": [0]})
    assert resp.payload["deals"]["dr"][0]["asin"] == "B1"
    sel = json.loads(server.requests[0]["query"]["selection"][0])
    assert sel == {"page": 0, "domainId": 1, "sortType": 1, "priceTypes": [0]}


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, KeepaRequestRejected),
        (402, KeepaPaymentRequired),
        (405, KeepaMethodNotAllowed),
        (429, KeepaNotEnoughTokens),
        (500, KeepaServerError),
        (503, KeepaServerError),
    ],
)
def test_each_status_has_its_error_with_envelope(
    server: Scripted, status: int, cls: type[KeepaError]
) -> None:
    body = {**ENVELOPE, "tokensLeft": -5, "tokensConsumed": 0, "error": {"type": "X"}}
    server.reply = lambda h: _json(h, status, body)
    with pytest.raises(cls) as info:
        client(server).product(["B000000001"])
    assert info.value.status == status
    assert info.value.envelope is not None and info.value.envelope.tokens_left == -5
    assert KEY not in str(info.value) and KEY not in repr(info.value)


def test_read_timeout_is_a_timeout_that_may_have_been_sent(server: Scripted) -> None:
    def late(h: BaseHTTPRequestHandler) -> None:
        server.release.wait(10)  # answers only when the test is over; the client gave up

    server.reply = late
    with pytest.raises(KeepaTimeout) as info:
        client(server, read_timeout_s=0.2).token()
    assert info.value.sent is True
    assert KEY not in str(info.value)


def test_refused_connection_was_not_sent() -> None:
    with refused_port() as port, pytest.raises(KeepaConnectionError) as info:
        KeepaClient(f"http://127.0.0.1:{port}", KEY, connect_timeout_s=2).token()
    assert info.value.sent is False
    assert KEY not in str(info.value)


def test_dropped_connection_may_have_been_sent(server: Scripted) -> None:
    def drop(h: BaseHTTPRequestHandler) -> None:
        h.close_connection = True
        h.connection.close()

    server.reply = drop
    with pytest.raises(KeepaConnectionError) as info:
        client(server).token()
    assert info.value.sent is True
    assert KEY not in str(info.value)


def test_malformed_body_is_bad_response(server: Scripted) -> None:
    def garbage(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "9")
        h.end_headers()
        h.wfile.write(b'{"tokens"')

    server.reply = garbage
    with pytest.raises(KeepaBadResponse):
        client(server).token()


def test_json_without_envelope_is_bad_response(server: Scripted) -> None:
    server.reply = lambda h: _json(h, 200, {"products": []})
    with pytest.raises(KeepaBadResponse):
        client(server).token()


def test_gzip_is_asked_for_and_decoded(server: Scripted) -> None:
    server.reply = lambda h: _json(h, 200, {**ENVELOPE, "products": [{"asin": "B1"}]}, gz=True)
    resp = client(server).product(["B1"])
    assert "gzip" in server.requests[0]["headers"]["Accept-Encoding"]
    assert resp.payload["products"] == [{"asin": "B1"}]


def test_key_not_in_repr() -> None:
    c = KeepaClient("http://127.0.0.1:8080", KEY)  # never connected to
    assert KEY not in repr(c) and KEY not in str(c)


def test_envelope_wire_round_trip_and_validation() -> None:
    env = TokenEnvelope.from_wire(ENVELOPE)
    assert TokenEnvelope.from_wire(env.to_wire()) == env
    assert TokenEnvelope.from_json({"tokensLeft": 1}) is None
    with pytest.raises(ValueError):
        TokenEnvelope.from_wire({**ENVELOPE, "tokensLeft": "many"})
    with pytest.raises(ValueError):
        TokenEnvelope.from_wire({**ENVELOPE, "refillIn": True})


# --- Keepa's real contract (issue 11) -------------------------------------------------------


def test_an_error_in_a_200_is_an_error_never_no_products() -> None:
    from common.errors import KeepaParameterError
    from sim.server import SimServer

    with SimServer(port=0) as server:
        client = KeepaClient(server.url, "test-key-interop")
        asin = server.sim.catalog.asin(0)
        with pytest.raises(KeepaParameterError) as info:
            client.product([asin], offers=10)
        assert info.value.status == 200 and info.value.envelope.tokens_consumed == 0
        client.close()


def test_404_and_503_are_typed_and_503_is_a_server_error() -> None:
    from common.errors import KeepaNotFound, KeepaServerError, KeepaUnavailable
    from sim.server import SimServer

    with SimServer(port=0) as server:
        client = KeepaClient(server.url, "test-key-interop")
        server.sim.faults.add("503", 1)
        with pytest.raises(KeepaUnavailable) as info:
            client.token()
        assert isinstance(info.value, KeepaServerError)  # retried like a 500
        client.base_url = server.url + "/nope"
        with pytest.raises(KeepaNotFound):
            client.token()
        client.close()


def test_envelope_numbers_parse_as_any_json_number() -> None:
    env = TokenEnvelope.from_wire(
        {
            "timestamp": 1.7e12,
            "tokensLeft": 41.7,
            "refillIn": 1000.0,
            "refillRate": 60,
            "tokensConsumed": 5.2,
        }
    )
    assert env.tokens_left == 41  # a balance rounds down
    assert env.tokens_consumed == 6  # a cost rounds up
    assert TokenEnvelope.from_wire({**env.to_wire(), "tokensLeft": -3.5}).tokens_left == -4
