"""Host A's simulated Keepa API for the two-host test: ``sim.server.SimServer`` on loopback
(as everywhere), plus what the test counts:

* every paid ``/product`` call's ASINs, as a peek (``history=0``) or a commit, whoever sent it;
* a relay on host A's wan address (the simulator listens on loopback only) through which host
  B's workers reach it: the relay reads the request lines going through, so the test knows
  which calls (and which peeks) came from host B.

``GET /_sim/two_host?key=K`` returns those counts (``run.py``-style: one process, started by
the test inside host A's namespace). Run: ``python -m two_host.sim_two_host --port P --relay
HOST:PORT --refill-rate R --refill-period S``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import signal
import socket
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sim.server import SimServer

REQUEST_LINE = re.compile(rb"(GET|POST) (\S+) HTTP/1\.[01]\r\n")
BUFFER = 65536


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.peeks: collections.Counter[str] = collections.Counter()
        self.commits: collections.Counter[str] = collections.Counter()
        self.b_requests = 0
        self.b_bytes = 0
        self.b_peeked: collections.Counter[str] = collections.Counter()

    def paid_product(self, query: Mapping[str, str]) -> None:
        asins = [a.strip().upper() for a in query.get("asin", "").split(",") if a.strip()]
        peek = query.get("history") == "0"
        with self.lock:
            (self.peeks if peek else self.commits).update(asins)

    def b_request(self, target: bytes) -> None:
        url = urlsplit(target.decode("latin-1"))
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with self.lock:
            self.b_requests += 1
            if url.path.rstrip("/").endswith("/product") and query.get("history") == "0":
                self.b_peeked.update(a.strip().upper() for a in query.get("asin", "").split(","))

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            return {
                "peeks": dict(self.peeks),
                "commits": dict(self.commits),
                "b_requests": self.b_requests,
                "b_bytes": self.b_bytes,
                "b_peeked": dict(self.b_peeked),
            }


def count_paid_products(server: SimServer, counts: Counts) -> None:
    product = server.sim.handlers["product"]

    def counted(account: Any, query: Mapping[str, str], body: bytes, now: float) -> Any:
        outcome = product(account, query, body, now)
        if outcome.status == 200 and outcome.consumed > 0:
            counts.paid_product(query)
        return outcome

    server.sim.handlers["product"] = counted
    server.sim.admin_handlers["two_host"] = ("GET", lambda query, now: counts.as_dict())


class Relay:
    """host B -> the simulator: one thread pair per connection, request lines counted."""

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int], counts: Counts) -> None:
        self.upstream = upstream
        self.counts = counts
        self.sock = socket.create_server(listen, reuse_port=False)

    def serve(self) -> None:
        while True:
            client, _ = self.sock.accept()
            threading.Thread(target=self._connection, args=(client,), daemon=True).start()

    def _connection(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()
        self._pipe(client, upstream, True)

    def _pipe(self, src: socket.socket, dst: socket.socket, from_b: bool) -> None:
        pending = b""
        try:
            while data := src.recv(BUFFER):
                if from_b:
                    with self.counts.lock:
                        self.counts.b_bytes += len(data)
                    pending += data
                    end = 0
                    for match in REQUEST_LINE.finditer(pending):
                        self.counts.b_request(match.group(2))
                        end = match.end()
                    pending = pending[end:][-4096:]  # a request line cut by recv() waits
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--relay", required=True, metavar="HOST:PORT")
    parser.add_argument("--refill-rate", type=int, default=200)
    parser.add_argument("--refill-period", type=float, default=0.5)
    parser.add_argument("--latency-scale", type=float, default=0.0)
    args = parser.parse_args()
    server = SimServer(
        port=args.port,
        refill_rate=args.refill_rate,
        refill_period_s=args.refill_period,
        seed=7,
        latency_scale=args.latency_scale,
        strict_offer_cap=True,
    )
    counts = Counts()
    count_paid_products(server, counts)
    server.start()
    host, port = args.relay.rsplit(":", 1)
    relay = Relay((host, int(port)), ("127.0.0.1", server.port), counts)
    threading.Thread(target=relay.serve, daemon=True).start()
    print(f"simulator on {server.url}, relay on {args.relay}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
