"""A small protocol client for the broker's socket and process tests (run as a script).

It speaks the wire format of ``common/protocol.py`` the way a worker does: a socket thread
owns the DEALER, says HELLO, heartbeats every ``heartbeat_s`` with the work loop's progress
counter and answers DISCONNECT with a new HELLO; the main thread (the "work loop") talks to
the socket thread over an inproc PAIR. Modes:

``work``    N times: REQUEST -> on GRANT a real ``/product`` call (offers=20) through
            ``common.keepa.KeepaClient`` -> SETTLE with its envelope; then BYE, print a JSON
            summary line, exit 0
``idle``    HELLO and heartbeats until killed
``hold``    take one permit, never settle it, stop heartbeating, sleep until killed
``silent``  heartbeat for ``--silent-after`` seconds, then stop, sleep until killed

``--start-time-offset`` reports a wrong process start time in HELLO (the broker must then
refuse to signal this pid); ``--host`` reports another host (the broker then sends KILL,
on which this client exits with status 3).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

import requests
import zmq

from common import procinfo, protocol
from common.errors import KeepaError
from common.keepa import KeepaClient

INPROC = "inproc://client-work-loop"
REPLY_TIMEOUT_S = 30.0
OFFER_PAGE_COST = 6  # Keepa: 6 tokens per page of up to 10 offers, per product
OFFERS = 20
QUIT = b"quit"


class Link(threading.Thread):
    """The socket thread: owns the DEALER, heartbeats, relays everything else."""

    def __init__(self, ctx: zmq.Context[Any], args: argparse.Namespace, hello: protocol.Hello):
        super().__init__(name="link", daemon=True)
        self.ctx = ctx
        self.args = args
        self.hello = hello
        self.heartbeat_s = args.heartbeat_s
        self.progress = 0
        self.waiting = False
        self.heartbeating = True
        self.ready = threading.Event()

    def run(self) -> None:
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.connect(self.args.broker)
        pair = self.ctx.socket(zmq.PAIR)
        pair.linger = 0
        pair.bind(INPROC)
        self.ready.set()
        dealer.send(self.hello.encode())
        poller = zmq.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(pair, zmq.POLLIN)
        next_hb = time.monotonic() + self.heartbeat_s
        while True:
            timeout_ms = max(0, int((next_hb - time.monotonic()) * 1000))
            events = dict(poller.poll(timeout_ms))
            if dealer in events:
                data = dealer.recv()
                msg = protocol.decode(data, max_bytes=protocol.MAX_REPLY_BYTES)
                if isinstance(msg, protocol.Welcome):
                    self.heartbeat_s = msg.heartbeat_s
                elif isinstance(msg, protocol.Disconnect):
                    dealer.send(self.hello.encode())
                elif isinstance(msg, protocol.Kill):
                    print(json.dumps({"killed_by_message": msg.reason}), flush=True)
                    os._exit(3)
                if not isinstance(msg, protocol.Heartbeat):
                    pair.send(data)
            if pair in events:
                data = pair.recv()
                if data == QUIT:
                    dealer.close(linger=2000)  # blocks until what was sent has left
                    pair.close(linger=0)
                    return
                dealer.send(data)
            if time.monotonic() >= next_hb:
                next_hb = time.monotonic() + self.heartbeat_s
                if self.heartbeating:
                    hb = protocol.Heartbeat(
                        progress=self.progress,
                        waiting=self.waiting,
                        stage=self.args.mode,
                        items_done=self.progress,
                        info={"pipeline": {"client": self.hello.worker_id}},
                    )
                    dealer.send(hb.encode())


def wait_for(pair: zmq.Socket[Any], kinds: tuple[type, ...], seq: int | None = None) -> Any:
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while time.monotonic() < deadline:
        if not pair.poll(int((deadline - time.monotonic()) * 1000) + 1):
            break
        msg = protocol.decode(pair.recv(), max_bytes=protocol.MAX_REPLY_BYTES)
        if isinstance(msg, kinds) and (seq is None or getattr(msg, "seq", seq) == seq):
            return msg
    raise SystemExit(f"no {[k.TYPE for k in kinds]} within {REPLY_TIMEOUT_S} s")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--mode", choices=("work", "idle", "hold", "silent"), default="work")
    parser.add_argument("--sim", default="")
    parser.add_argument("--key", default="simulated-demo-key")
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--asins-per-call", type=int, default=2)
    parser.add_argument("--catalog-offset", type=int, default=0)
    parser.add_argument("--heartbeat-s", type=float, default=0.1)
    parser.add_argument("--silent-after", type=float, default=0.5)
    parser.add_argument("--start-time-offset", type=int, default=0)
    parser.add_argument("--host", default="", help="report another host (default: this one)")
    args = parser.parse_args()

    pid, start_time = procinfo.own_identity()
    hello = protocol.Hello(
        worker_id=args.id,
        pid=pid,
        host=args.host or procinfo.this_host(),
        start_time=start_time + args.start_time_offset,
        role="test",
        version="test",
    )
    ctx = zmq.Context()
    link = Link(ctx, args, hello)
    link.start()
    link.ready.wait(10)
    pair = ctx.socket(zmq.PAIR)
    pair.linger = 0
    pair.connect(INPROC)
    wait_for(pair, (protocol.Welcome,))
    print(json.dumps({"welcomed": args.id, "pid": pid}), flush=True)

    if args.mode == "idle":
        while True:
            time.sleep(1)
    if args.mode == "silent":
        time.sleep(args.silent_after)
        link.heartbeating = False
        print(json.dumps({"silent": True}), flush=True)
        while True:
            time.sleep(1)
    if args.mode == "hold":
        pair.send(protocol.Request(seq=1, cost=5, deadline_s=30.0).encode())
        grant = wait_for(pair, (protocol.Grant, protocol.Reject), seq=1)
        print(json.dumps({"holding": getattr(grant, "permit", None)}), flush=True)
        link.heartbeating = False
        while True:
            time.sleep(1)

    # work
    k = args.asins_per_call
    resp = requests.get(
        f"{args.sim}/_sim/catalog",
        params={"offset": args.catalog_offset, "limit": k * args.requests},
        timeout=10,
    )
    asins = resp.json()["asins"]
    client = KeepaClient(args.sim, args.key, read_timeout_s=10.0)
    summary: dict[str, Any] = {"grants": 0, "rejects": 0, "tokens_consumed": 0, "status_429": 0}
    for seq in range(1, args.requests + 1):
        batch = asins[(seq - 1) * k : seq * k] or asins[:k]
        cost = OFFER_PAGE_COST * (OFFERS // 10) * len(batch)
        link.waiting = True
        pair.send(protocol.Request(seq=seq, cost=cost, deadline_s=60.0).encode())
        reply = wait_for(pair, (protocol.Grant, protocol.Reject), seq=seq)
        link.waiting = False
        if isinstance(reply, protocol.Reject):
            summary["rejects"] += 1
            continue
        summary["grants"] += 1
        envelope: dict[str, Any] | None = None
        http_status: int | None = None
        status = "ok"
        try:
            result = client.product(batch, offers=OFFERS, stats=90)
            envelope, http_status = result.envelope.to_wire(), result.status
        except KeepaError as exc:
            status = "http_error" if exc.status is not None else "error"
            http_status = exc.status
            if exc.envelope is not None:
                envelope = exc.envelope.to_wire()
        if http_status == 429:
            summary["status_429"] += 1
        if envelope is not None:
            summary["tokens_consumed"] += int(envelope.get("tokensConsumed", 0))
        pair.send(
            protocol.Settle(
                permit=reply.permit, status=status, envelope=envelope, http_status=http_status
            ).encode()
        )
        link.progress += 1
    pair.send(protocol.Bye("done").encode())
    pair.send(QUIT)
    link.join(10)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
