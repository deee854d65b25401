"""The simulator over HTTP: a ``ThreadingHTTPServer`` (one daemon thread per connection) in
front of ``sim.api.KeepaSim``, and ``SimServer`` to run it in a background thread.

Each API request is decided and charged by ``KeepaSim.handle``; the handler thread then
waits out the simulated latency holding no lock (other requests, on the same key too, go on
in parallel), and answers with the envelope as of that moment. Responses are gzip-compressed
when the client sends ``Accept-Encoding: gzip``. Paths work with and without a trailing slash.

    with SimServer(port=0, refill_rate=20, refill_period_s=0.05, seed=1) as sim:
        requests.get(f"{sim.url}/token", params={"key": "test-key-1"})
        sim.state("test-key-1")["tokens_left"]
"""

from __future__ import annotations

import contextlib
import gzip
import ipaddress
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sim.api import KeepaSim, Outcome
from sim.catalog import DEFAULT_CATALOG_SIZE, DEFAULT_DEAL_INTERVAL_S
from sim.deals import DEAL_CACHE_S

log = logging.getLogger(__name__)

ADMIN_PREFIX = "/_sim/"
MAX_BODY_BYTES = 1_000_000
GZIP_LEVEL = 5
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.02  # how soon stop() is noticed
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sim: KeepaSim) -> None:
        self.sim = sim
        self.stopping = threading.Event()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-answer is not the server's problem.
        log.debug("error while serving a request", exc_info=True)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "keepa-sim/1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms stalls
    server: _HTTPServer

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def log_message(self, format: str, *args: Any) -> None:
        # The default access log writes the URL, which holds the key: ours is in _dispatch.
        pass

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            self._send(400, {"error": f"Content-Length must be 0..{MAX_BODY_BYTES}"})
            return
        body = self.rfile.read(length) if length > 0 else b""
        sim = self.server.sim
        if parts.path.startswith(ADMIN_PREFIX):
            status, payload = sim.admin(method, parts.path[len(ADMIN_PREFIX) :], query)
            self._send(status, payload)
            return
        outcome = sim.handle(method, parts.path, query, body)
        wait = outcome.wait_s(time.monotonic())
        if wait > 0:
            self.server.stopping.wait(wait)  # no lock held; stop() cuts it short
        self._log(method, parts.path, outcome)
        if outcome.fault_kind == "drop":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        payload = sim.respond(outcome)
        if outcome.fault_kind == "malformed":
            data = json.dumps(payload, separators=(",", ":")).encode()
            self._send_bytes(200, data[: max(1, len(data) // 2)])
            return
        self._send(outcome.status, payload)

    def _log(self, method: str, path: str, outcome: Outcome) -> None:
        if log.isEnabledFor(logging.DEBUG):
            who = outcome.account.label if outcome.account else "no account"
            fault = f" fault={outcome.fault_kind}" if outcome.fault else ""
            log.debug(
                "%s %s -> %d %s consumed %d%s",
                method,
                path,
                outcome.status,
                who,
                outcome.consumed,
                fault,
            )

    def _send(self, status: int, payload: Any) -> None:
        self._send_bytes(status, json.dumps(payload, separators=(",", ":")).encode())

    def _send_bytes(self, status: int, data: bytes) -> None:
        accept = self.headers.get("Accept-Encoding", "")
        gzipped = any(p.split(";")[0].strip().lower() == "gzip" for p in accept.split(","))
        if gzipped:
            data = gzip.compress(data, compresslevel=GZIP_LEVEL)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json;charset=utf-8")
            if gzipped:
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True  # the client went away


class SimServer:
    """The simulated Keepa API on ``host:port`` (port 0: a free one), served from a background
    thread. ``tokens=None`` starts every account full (60 × ``refill_rate``). ``latency_scale``
    defaults to 0 here (in-process tests); the CLI's default comes from the settings."""

    def __init__(
        self,
        port: int = 0,
        refill_rate: int = 20,
        refill_period_s: float = 60.0,
        tokens: int | None = None,
        seed: int = 1,
        latency_scale: float = 0.0,
        *,
        host: str = "127.0.0.1",
        catalog_size: int = DEFAULT_CATALOG_SIZE,
        deal_interval_s: float = DEFAULT_DEAL_INTERVAL_S,
        offer_fail_rate: float = 0.0,
        strict_offer_cap: bool = False,
        deal_cache_s: float = DEAL_CACHE_S,
    ) -> None:
        if not is_loopback(host):
            raise ValueError(f"host {host!r} is not a loopback address")
        self.host = host
        self._requested_port = port
        self.sim = KeepaSim(
            refill_rate=refill_rate,
            refill_period_s=refill_period_s,
            tokens=tokens,
            seed=seed,
            latency_scale=latency_scale,
            catalog_size=catalog_size,
            deal_interval_s=deal_interval_s,
            offer_fail_rate=offer_fail_rate,
            strict_offer_cap=strict_offer_cap,
            deal_cache_s=deal_cache_s,
        )
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> SimServer:
        if self._httpd is not None:
            return self
        cls = _HTTPServer6 if ":" in self.host else _HTTPServer
        httpd = cls((self.host, self._requested_port), self.sim)  # bound and listening
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL_S},
            name="sim-http",
            daemon=True,
        )
        self._thread.start()
        log.debug("simulator listening on %s", self.url)
        return self

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        httpd.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=STOP_TIMEOUT_S)
        self._httpd = self._thread = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the simulator is not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def state(self, key: str) -> dict[str, Any]:
        """What ``GET /_sim/state?key=K`` returns."""
        status, body = self.sim.admin("GET", "state", {"key": key})
        if status != 200:
            raise ValueError(body.get("error", f"state: HTTP {status}"))
        return dict(body)

    def totals(self) -> dict[str, Any]:
        return self.sim.totals()

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
