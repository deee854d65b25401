"""Many registered workers in one process, for the heartbeat-load benchmark.

    python -m bench.hb_holder --broker ADDR --count N --prefix NAME [--heartbeat-s 1]

Opens ``N`` DEALER sockets to the broker; each says HELLO as its own worker and, after
``GO T_STOP``, sends a HEARTBEAT every ``--heartbeat-s`` (staggered over the interval, its
progress advancing) until ``STOP`` on stdin (or T_STOP at the latest), reading and dropping
what the broker sends (its heartbeats to idle workers). 500 registered workers thus need a
few processes, not 500. Prints ``READY`` once every socket got its WELCOME, ``RESULT {json}``
at the end.

Each virtual worker reports the holder's pid and start time but a host name of its own
(``bench-<prefix>-<i>``): they are not processes the broker could signal, and if one were
ever judged dead the broker would send it a KILL message (counted here) instead of
signalling the holder, which carries 100 of them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import zmq

from bench.harness import child_ready, child_result, child_wait_go
from common import protocol
from common.procinfo import own_identity

HANDSHAKE_TIMEOUT_S = 60.0
POLL_MAX_MS = 50


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--heartbeat-s", type=float, default=1.0)
    args = parser.parse_args()
    ctx = zmq.Context()
    socks: list[zmq.Socket[Any]] = []
    pid, start = own_identity()
    poller = zmq.Poller()
    try:
        for i in range(args.count):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            wid = f"{args.prefix}-{i:03d}"
            s.setsockopt(zmq.IDENTITY, wid.encode())
            s.connect(args.broker)
            s.send(
                protocol.Hello(
                    worker_id=wid,
                    pid=pid,
                    host=f"bench-{args.prefix}-{i:03d}",
                    start_time=start,
                    role="bench",
                    version="bench",
                ).encode()
            )
            socks.append(s)
            poller.register(s, zmq.POLLIN)
        counts = {"welcome": 0, "heartbeat_in": 0, "kill": 0, "disconnect": 0, "other": 0}
        reasons: dict[str, int] = {}
        welcomed: set[int] = set()
        index = {s: i for i, s in enumerate(socks)}
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
        while len(welcomed) < len(socks) and time.monotonic() < deadline:
            for s, _ in poller.poll(POLL_MAX_MS):
                msg = protocol.decode(s.recv())
                if isinstance(msg, protocol.Welcome):
                    welcomed.add(index[s])
        if len(welcomed) < len(socks):
            raise SystemExit(f"only {len(welcomed)} of {len(socks)} workers welcomed")
        counts["welcome"] = len(welcomed)
        child_ready()
        words = child_wait_go()
        t_stop = float(words[0])
        n = len(socks)
        now = time.time()
        # Staggered: worker i beats at now + i/n * H, then every H.
        due = [now + args.heartbeat_s * i / n for i in range(n)]
        progress = [0] * n
        sent = 0
        late_s_max = 0.0
        stdin_fd = sys.stdin.fileno()
        poller.register(stdin_fd, zmq.POLLIN)
        while True:
            now = time.time()
            if now >= t_stop:
                break
            for i in range(n):
                if due[i] <= now:
                    late_s_max = max(late_s_max, now - due[i])
                    progress[i] += 1
                    socks[i].send(protocol.Heartbeat(progress=progress[i], stage="bench").encode())
                    sent += 1
                    due[i] += args.heartbeat_s
                    if due[i] < now:  # fell behind: do not burst to catch up
                        due[i] = now + args.heartbeat_s
            wait_ms = max(0, min(POLL_MAX_MS, int((min(due) - time.time()) * 1000)))
            events = poller.poll(wait_ms)
            if any(s == stdin_fd for s, _ in events) and "STOP" in sys.stdin.readline():
                break
            for s, _ in events:
                if s == stdin_fd:
                    continue
                while True:
                    try:
                        data = s.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    msg = protocol.decode(data)
                    if isinstance(msg, protocol.Heartbeat):
                        counts["heartbeat_in"] += 1
                    elif isinstance(msg, protocol.Kill | protocol.Disconnect | protocol.Error):
                        kind = msg.TYPE.lower()
                        counts[kind] = counts.get(kind, 0) + 1
                        why = (
                            f"{msg.TYPE}: {getattr(msg, 'reason', '') or getattr(msg, 'code', '')}"
                        )
                        reasons[why[:80]] = reasons.get(why[:80], 0) + 1
                    else:
                        counts["other"] += 1
        for s in socks:
            s.send(protocol.Bye(reason="bench done").encode())
        child_result(
            {"heartbeats_sent": sent, "late_s_max": late_s_max, "reasons": reasons, **counts}
        )
    finally:
        for s in socks:
            s.close(linger=200)  # let the BYEs out
        ctx.term()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
