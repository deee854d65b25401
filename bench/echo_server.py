"""The baseline of the broker-capacity benchmark: a bare pyzmq ROUTER echo loop.

    python -m bench.echo_server --bind tcp://127.0.0.1:PORT --max-s 600

Every frame a peer sends comes straight back to it, undecoded. One poller loop, like the
broker's, with a 100 ms poll timeout; it exits on SIGTERM or after ``--max-s`` seconds.
"""

from __future__ import annotations

import argparse
import signal
import time

import zmq

POLL_MS = 100


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", required=True)
    parser.add_argument("--max-s", type=float, default=600.0)
    args = parser.parse_args()
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(args.bind)
    print("READY", flush=True)
    deadline = time.monotonic() + args.max_s
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    try:
        while not stop and time.monotonic() < deadline:
            if not poller.poll(POLL_MS):
                continue
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                sock.send_multipart(frames)
    finally:
        sock.close(linger=0)
        ctx.term()


if __name__ == "__main__":
    main()
