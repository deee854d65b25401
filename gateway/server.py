"""The Keepa-compatible HTTP gateway: other programs on the key, through the broker.

One ``ThreadingHTTPServer`` (stdlib; a thread per connection, at most ``max_requests``
requests at once, 503 beyond). Each request, in this order::

    read       body over max_body_bytes -> 413; headers slower than client_timeout_s -> closed
    who        clients.authenticate -> 401
    price      pricing.price -> 404 / 405 / 400 (nothing asked, nothing spent)
    /token     answered from the broker's ledger (its STATUS), never sent to Keepa
    cap        cost over the largest grantable permit -> 400 saying why
    wait       at most broker.max_queued_per_worker requests of one client wait at the
               broker; the rest wait here (same deadline)
    permit     ClientLink.acquire(cost, priority, wait) on the client's own registration:
               GRANT -> forward; no grant by the deadline -> 429 with the ledger's envelope
               (as Keepa answers); the HTTP client hung up -> CANCEL (never a leaked permit);
               no broker -> 503 (fail closed: nothing is sent to Keepa)
    forward    the same method, path, parameters and body to Keepa with the real key (the
               client's key is dropped), Accept-Encoding gzip
    settle     with Keepa's envelope, always (ok / http_error / timeout / ...)
    answer     Keepa's status, body and gzip as they came (decompressed only for a client
               that did not ask for gzip)

The real key is never logged or answered: logs name the client and the path only, and an
upstream error is reported by kind, never by its text (which holds the URL).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import math
import select
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from common.config import Settings
from common.errors import BrokerUnavailable, PermitRejected, PermitTimeout
from common.keepa import TokenEnvelope, _refused
from common.status_client import fetch_status
from gateway import pricing
from gateway.clients import CLIENT_HEADER, Client, ClientStore, Unauthorized
from gateway.links import ClientGone, ClientLink, Held

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8788"
MAX_WAIT_S = 60.0  # a request waits for its permit at most this long (unless it says less)
WAIT_HEADER = "X-Keepa-Fleet-Wait-S"  # the client's own limit, seconds
MAX_BODY_BYTES = 1024 * 1024
MAX_REQUESTS = 64  # requests being served at once; 503 beyond
CLIENT_TIMEOUT_S = 30.0  # a socket read from the client (headers, body) at most this long
LEDGER_CACHE_S = 0.25  # /token and 429 envelopes: the broker's STATUS at most this old
STATUS_TIMEOUT_S = 2.0
LINK_PREFIX = "gateway/"  # a client's name at the broker


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class Gateway:
    """The gateway's state: the client links, the ledger cache, the HTTP server."""

    def __init__(
        self,
        settings: Settings,
        store: ClientStore,
        *,
        listen: str = DEFAULT_LISTEN,
        max_wait_s: float = MAX_WAIT_S,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_requests: int = MAX_REQUESTS,
        client_timeout_s: float = CLIENT_TIMEOUT_S,
        status_fetch: Callable[[], dict[str, Any] | None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.host, self.port = parse_listen(listen)
        self.max_wait_s = max_wait_s
        self.max_body_bytes = max_body_bytes
        self.client_timeout_s = client_timeout_s
        self.base_url = settings.base_url
        self._key = settings.api_key
        self._links: dict[str, ClientLink] = {}
        self._waiting: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_requests)
        self._local = threading.local()
        self._status_fetch = status_fetch or self._fetch_status
        self._ledger: tuple[float, dict[str, Any] | None] = (float("-inf"), None)
        self._ledger_lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def bind(self) -> None:
        gateway = self

        class Handler(GatewayHandler):
            pass

        Handler.gateway = gateway
        Handler.timeout = self.client_timeout_s
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True
            request_queue_size = 128

        self._server = Server((self.host, self.port), Handler)
        self.port = int(self._server.server_address[1])
        log.info(
            "gateway listening on http://%s:%d for Keepa at %s (broker %s; %d registered "
            "clients; loopback callers need no token)",
            self.host,
            self.port,
            self.base_url,
            self.settings.broker.address,
            len(self.store.names),
        )

    def serve_forever(self) -> None:
        assert self._server is not None
        self._server.serve_forever(poll_interval=0.2)

    def start_thread(self) -> None:
        """bind() and serve in a daemon thread (tests)."""
        self.bind()
        self._thread = threading.Thread(target=self.serve_forever, name="gateway", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving, then close every client link (settles flushed, BYE)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            links, self._links = list(self._links.values()), {}
        for link in links:
            link.close("gateway stopping")
        log.info("gateway stopped")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- client links -------------------------------------------------------------------

    def link_for(self, client: Client) -> ClientLink:
        with self._lock:
            link = self._links.get(client.name)
            if link is None:
                b = self.settings.broker
                link = ClientLink(
                    b.address,
                    LINK_PREFIX + client.name,
                    heartbeat_s=b.heartbeat_s,
                    liveness=b.liveness,
                    reconnect_max_s=self.settings.worker.reconnect_max_s,
                    curve_dir=b.curve_dir,
                )
                link.link.start()
                self._links[client.name] = link
                self._waiting[client.name] = threading.BoundedSemaphore(
                    max(1, b.max_queued_per_worker)
                )
                log.info("client %s: first request, registering at the broker", client.name)
        return link

    def waiting_slot(self, name: str) -> threading.BoundedSemaphore:
        with self._lock:
            return self._waiting[name]

    def count(self, what: str) -> None:
        with self._lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    # --- the ledger ---------------------------------------------------------------------

    def _fetch_status(self) -> dict[str, Any] | None:
        b = self.settings.broker
        return fetch_status(b.address, timeout=STATUS_TIMEOUT_S, curve_dir=b.curve_dir)

    def ledger_envelope(self, *, for_429: bool = False) -> dict[str, Any] | None:
        """A Keepa envelope from the broker's ledger (None when the broker has none)."""
        with self._ledger_lock:
            at, state = self._ledger
            now = time.monotonic()
            if now - at > LEDGER_CACHE_S:
                state = self._status_fetch()
                at = now
                self._ledger = (at, state)
        if state is None:
            return None
        tokens = state.get("tokens") or {}
        if tokens.get("now") is None:
            return None
        age_ms = (time.monotonic() - at) * 1000
        period_ms = float((state.get("settings") or {}).get("refill_period_s") or 60) * 1000
        refill_in = float(tokens.get("refill_in_ms") or 0) - age_ms
        while refill_in < 0:
            refill_in += period_ms
        left = math.floor(tokens["now"])
        if for_429:
            left = min(0, math.floor(tokens.get("available") or 0))
        return {
            "timestamp": int(time.time() * 1000),
            "tokensLeft": left,
            "refillIn": math.ceil(refill_in),
            "refillRate": int(tokens.get("refill_rate") or 0),
            "tokenFlowReduction": 0.0,
            "tokensConsumed": 0,
            "processingTimeInMs": 0,
        }

    # --- upstream -----------------------------------------------------------------------

    def session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            self._local.session = s
        return s

    def forward(
        self, method: str, path: str, query: list[tuple[str, str]], body: bytes, ctype: str
    ) -> requests.Response:
        params = [(k, v) for k, v in query if k != "key"] + [("key", self._key)]
        k = self.settings.keepa
        headers = {"Accept-Encoding": "gzip"}
        if body:
            headers["Content-Type"] = ctype or "application/json"
        return self.session().request(
            method,
            f"{self.base_url}/{path}",
            params=params,
            data=body or None,
            headers=headers,
            timeout=(k.connect_timeout_s, k.read_timeout_s),
            stream=True,
        )


def error_body(envelope: dict[str, Any] | None, error_type: str, message: str) -> bytes:
    """Keepa's error shape: the envelope (tokensConsumed 0) and an ``error`` object."""
    body: dict[str, Any] = dict(envelope or {})
    body["error"] = {"type": error_type, "message": message}
    return json.dumps(body).encode()


class GatewayHandler(BaseHTTPRequestHandler):
    gateway: Gateway
    protocol_version = "HTTP/1.1"
    server_version = "keepa-fleet-gateway"
    sys_version = ""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own refusals (414, a malformed request line, 501) in Keepa's JSON
        error shape instead of an HTML page."""
        try:
            phrase = message or HTTPStatus(code).phrase
        except ValueError:
            phrase = message or "error"
        self._answer(code, error_body(None, "badRequest", phrase), True)

    def log_message(self, format: str, *args: Any) -> None:  # the path only: no query, no key
        log.debug("%s %s", self.address_string(), format % args if "%" in format else format)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # No path when the request line itself was refused (414, a malformed line).
        path = urllib.parse.urlsplit(getattr(self, "path", "") or "").path
        log.debug("%s %s %s -> %s", self.address_string(), self.command, path[:100], code)

    # --- one request --------------------------------------------------------------------

    def _serve(self, method: str) -> None:
        g = self.gateway
        if not g._slots.acquire(blocking=False):
            g.count("busy")
            self._answer(503, error_body(None, "busy", "the gateway is at its request limit"))
            return
        try:
            self._serve_one(method)
        except (BrokenPipeError, ConnectionResetError):
            log.info("a client hung up before its answer was written")
        finally:
            g._slots.release()

    def _serve_one(self, method: str) -> None:
        g = self.gateway
        split = urllib.parse.urlsplit(self.path)
        try:
            pairs = urllib.parse.parse_qsl(
                split.query, keep_blank_values=True, strict_parsing=False
            )
        except ValueError:
            pairs = []
        body = self._read_body()
        if body is None:
            return
        try:
            client = g.store.authenticate(
                self.client_address[0],
                self.headers.get("Authorization", ""),
                self.headers.get(CLIENT_HEADER, ""),
            )
        except Unauthorized as exc:
            g.count("unauthorized")
            log.warning("refused a request from %s: %s", self.client_address[0], exc)
            self._answer(401, error_body(None, "unauthorized", str(exc)))
            return
        params: dict[str, str] = {}
        for k, v in pairs:
            if k in params:
                self._refuse(pricing.BadCall(400, "invalidParameter", f"{k[:40]} given twice"))
                return
            params[k] = v
        try:
            priced = pricing.price(method, split.path, params)
        except pricing.BadCall as exc:
            self._refuse(exc, client)
            return
        if priced.path == pricing.TOKEN:
            self._answer_token()
            return
        wait_s = self._wait_s()
        if wait_s is None:
            return
        link = g.link_for(client)
        if not link.wait_ready(min(wait_s, 5.0)):
            self._unavailable(client, "no broker has welcomed the gateway yet")
            return
        if link.max_cost and priced.cost > link.max_cost:
            self._refuse(
                pricing.BadCall(
                    400,
                    "tooExpensive",
                    f"this call can cost up to {priced.cost} tokens; the account can never "
                    f"grant more than {link.max_cost} at once (60 x its refill rate): ask for "
                    "fewer items",
                ),
                client,
            )
            return
        held = self._acquire(link, client, priced.cost, wait_s)
        if held is None:
            return
        self._call_keepa(link, client, held, method, priced.path, pairs, body)

    def _read_body(self) -> bytes | None:
        g = self.gateway
        length_raw = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self._answer(411, error_body(None, "lengthRequired", "send a Content-Length"), True)
            return None
        if length_raw is None:
            return b""
        try:
            length = int(length_raw)
            if length < 0:
                raise ValueError
        except ValueError:
            self._answer(400, error_body(None, "invalidParameter", "bad Content-Length"), True)
            return None
        if length > g.max_body_bytes:
            g.count("too_large")
            log.warning(
                "refused a %d-byte body from %s (limit %d)",
                length,
                self.client_address[0],
                g.max_body_bytes,
            )
            self._answer(
                413,
                error_body(None, "tooLarge", f"body over {g.max_body_bytes} bytes"),
                True,
            )
            return None
        try:
            body = self.rfile.read(length)
        except (TimeoutError, OSError):
            log.warning("a client sent its body too slowly: connection closed")
            self.close_connection = True
            return None
        if len(body) < length:
            self.close_connection = True
            return None
        return body

    def _wait_s(self) -> float | None:
        g = self.gateway
        raw = self.headers.get(WAIT_HEADER)
        if raw is None:
            return g.max_wait_s
        try:
            value = float(raw)
            if not math.isfinite(value) or value <= 0:
                raise ValueError
        except ValueError:
            self._refuse(pricing.BadCall(400, "invalidParameter", f"{WAIT_HEADER} must be > 0"))
            return None
        return min(value, g.max_wait_s)

    def _acquire(self, link: ClientLink, client: Client, cost: int, wait_s: float) -> Held | None:
        g = self.gateway
        end = time.monotonic() + wait_s
        slot = g.waiting_slot(client.name)
        while not slot.acquire(timeout=0.05):
            if self._client_gone():
                g.count("gone_waiting")
                log.info("client %s hung up while waiting (in the gateway)", client.name)
                return None
            if time.monotonic() >= end:
                self._answer_429(client, cost, wait_s)
                return None
        try:
            remaining = max(0.001, end - time.monotonic())
            return link.acquire(
                cost, priority=client.priority, wait_s=remaining, abandoned=self._client_gone
            )
        except PermitTimeout:
            self._answer_429(client, cost, wait_s)
        except ClientGone as exc:
            g.count("gone_waiting")
            log.info("client %s: %s (request cancelled at the broker)", client.name, exc)
            self.close_connection = True
        except PermitRejected as exc:
            if exc.reason == "too_large":
                self._refuse(
                    pricing.BadCall(
                        400,
                        "tooExpensive",
                        f"this call can cost up to {cost} tokens; the broker can never grant "
                        f"more than {exc.max_cost} at once: ask for fewer items",
                    ),
                    client,
                )
            else:
                self._unavailable(client, f"the broker refused the permit: {exc.reason}")
        except BrokerUnavailable as exc:
            self._unavailable(client, str(exc))
        finally:
            slot.release()
        return None

    def _call_keepa(
        self,
        link: ClientLink,
        client: Client,
        held: Held,
        method: str,
        path: str,
        pairs: list[tuple[str, str]],
        body: bytes,
    ) -> None:
        g = self.gateway
        started = time.monotonic()
        try:
            resp = g.forward(method, path, pairs, body, self.headers.get("Content-Type", ""))
            raw = resp.raw.read(decode_content=False)
        except requests.exceptions.ConnectTimeout:
            link.settle(held, "not_sent")
            self._upstream_failed(client, 504, "could not connect to Keepa in time")
            return
        except requests.exceptions.Timeout:
            link.settle(held, "timeout")
            self._upstream_failed(client, 504, "Keepa did not answer in time")
            return
        except requests.exceptions.ConnectionError as exc:
            link.settle(held, "not_sent" if _refused(exc) else "connection_error")
            self._upstream_failed(client, 502, "the connection to Keepa failed")
            return
        except Exception as exc:  # an upstream read of any kind: outcome unknown
            link.settle(held, "error")
            log.error("client %s: call to Keepa failed (%s)", client.name, type(exc).__name__)
            self._upstream_failed(client, 502, "the call to Keepa failed")
            return
        encoding = resp.headers.get("Content-Encoding", "").lower()
        plain = raw
        if encoding == "gzip":
            try:
                plain = gzip.decompress(raw)
            except (OSError, EOFError):
                plain = b""
        try:
            envelope = TokenEnvelope.from_json(json.loads(plain))
        except ValueError:
            envelope = None
        wire = envelope.to_wire() if envelope is not None else None
        status = resp.status_code
        # Not Keepa JSON: the outcome is unknown, the cost assumed spent ("error").
        outcome = "ok" if 200 <= status < 300 else "http_error"
        outcome = outcome if envelope is not None else "error"
        link.settle(held, outcome, wire, status)
        g.count(f"status_{status}")
        level = logging.INFO if status < 400 else logging.WARNING
        log.log(
            level,
            "client %s: /%s -> %d, %s tokens (permit %d), %.2f s",
            client.name,
            path,
            status,
            envelope.tokens_consumed if envelope is not None else "?",
            held.cost,
            time.monotonic() - started,
        )
        accepts_gzip = "gzip" in self.headers.get("Accept-Encoding", "").lower()
        headers = {"Content-Type": resp.headers.get("Content-Type", "application/json")}
        out = raw
        if encoding == "gzip" and not accepts_gzip:
            out = plain
        elif encoding:
            headers["Content-Encoding"] = encoding
        self._answer(status, out, headers=headers)

    # --- answers ------------------------------------------------------------------------

    def _answer_token(self) -> None:
        envelope = self.gateway.ledger_envelope()
        if envelope is None:
            self._answer(503, error_body(None, "unavailable", "the broker has no token state yet"))
            return
        self.gateway.count("token")
        self._answer(200, json.dumps(envelope).encode())

    def _answer_429(self, client: Client, cost: int, wait_s: float) -> None:
        self.gateway.count("status_429_local")
        log.info("client %s: no grant of %d tokens within %.1f s: 429", client.name, cost, wait_s)
        envelope = self.gateway.ledger_envelope(for_429=True) or {}
        self._answer(429, json.dumps(envelope).encode())

    def _refuse(self, exc: pricing.BadCall, client: Client | None = None) -> None:
        self.gateway.count(f"refused_{exc.status}")
        log.info(
            "refused a request of %s: %d %s",
            client.name if client else self.client_address[0],
            exc.status,
            exc.message,
        )
        self._answer(exc.status, error_body(None, exc.error_type, exc.message))

    def _unavailable(self, client: Client, why: str) -> None:
        self.gateway.count("unavailable")
        log.warning("client %s: 503, %s", client.name, why)
        self._answer(503, error_body(None, "unavailable", why))

    def _upstream_failed(self, client: Client, status: int, why: str) -> None:
        self.gateway.count(f"upstream_{status}")
        log.warning("client %s: %d, %s", client.name, status, why)
        self._answer(status, error_body(None, "upstream", why))

    def _answer(
        self,
        status: int,
        body: bytes,
        close: bool = False,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        for k, v in (headers or {"Content-Type": "application/json"}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        with contextlib.suppress(OSError):
            self.wfile.flush()

    def _client_gone(self) -> bool:
        """True when the HTTP client has closed its end (EOF, reset)."""
        sock = self.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            return sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True
