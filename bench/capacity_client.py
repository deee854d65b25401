"""One client process of the broker-capacity benchmark; the same program for both targets.

    python -m bench.capacity_client --name NAME

Commands, one a line on stdin (answers on stdout):

``CONNECT broker|echo ADDRESS``  a new DEALER; HELLO and wait for the answer -> ``READY``
``GO T_START T_END T_STOP``      closed loop until T_STOP (epoch seconds) -> ``RESULT {json}``
``CLOSE``                        BYE, close the socket -> ``READY``
``EXIT``

The loop: send ``REQUEST(seq, cost=1)``, wait for its answer, send ``SETTLE(permit,
"not_sent")``; a ``HEARTBEAT`` every second. Against the broker the answer is the GRANT;
against the bare echo loop it is the REQUEST itself coming back (and the echoed SETTLE and
HEARTBEAT are read and dropped), so both targets get exactly the same frames from the same
clients. Only round trips completed between T_START and T_END are counted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import zmq

from bench.harness import child_result
from common import protocol
from common.procinfo import own_identity, this_host

HEARTBEAT_S = 1.0
HANDSHAKE_TIMEOUT_S = 30.0
RECV_TIMEOUT_S = 10.0
PERMIT_COST = 1
ECHO_PERMIT = "echo-permit-0000000000000000"  # about the length of a broker permit id


class Client:
    def __init__(self, name: str) -> None:
        self.name = name
        self.ctx = zmq.Context()
        self.sock: zmq.Socket[Any] | None = None
        self.mode = ""
        self.worker_id = ""
        self.generation = 0
        self.seq = 0
        self.progress = 0

    def connect(self, mode: str, address: str) -> None:
        self.mode = mode
        self.generation += 1
        self.worker_id = f"{self.name}-{self.generation}"
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, self.worker_id.encode())
        sock.connect(address)
        self.sock = sock
        pid, start = own_identity()
        hello = protocol.Hello(
            worker_id=self.worker_id,
            pid=pid,
            host=this_host(),
            start_time=start,
            role="bench",
            version="bench",
        )
        sock.send(hello.encode())
        if not sock.poll(int(HANDSHAKE_TIMEOUT_S * 1000)):
            raise SystemExit(f"{self.worker_id}: no answer to HELLO")
        msg = protocol.decode(sock.recv())
        if not isinstance(msg, protocol.Welcome | protocol.Hello):
            raise SystemExit(f"{self.worker_id}: HELLO answered with {msg.TYPE}")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.send(protocol.Bye(reason="bench done").encode())
            self.sock.close(linger=200)  # let the BYE out
            self.sock = None

    def run(self, t_start: float, t_end: float, t_stop: float) -> dict[str, Any]:
        sock = self.sock
        assert sock is not None
        rtts_us: list[int] = []
        counted = rejects = timeouts = 0
        sent_bytes = recv_bytes = 0
        next_hb = time.time()
        expect = protocol.Grant if self.mode == "broker" else protocol.Request
        while True:
            now = time.time()
            if now >= t_stop:
                break
            if now >= next_hb:
                self.progress += 1
                sock.send(protocol.Heartbeat(progress=self.progress, stage="bench").encode())
                next_hb = now + HEARTBEAT_S
            self.seq += 1
            request = protocol.Request(seq=self.seq, cost=PERMIT_COST, deadline_s=RECV_TIMEOUT_S)
            frame = request.encode()
            t0 = time.perf_counter()
            sock.send(frame)
            answer: protocol.Message | None = None
            deadline = time.monotonic() + RECV_TIMEOUT_S
            while answer is None:
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                if remaining_ms <= 0 or not sock.poll(remaining_ms):
                    break
                data = sock.recv()
                msg = protocol.decode(data)
                if isinstance(msg, expect) and msg.seq == self.seq:
                    answer = msg
                    recv_bytes = len(data)
                elif isinstance(msg, protocol.Reject) and msg.seq == self.seq:
                    answer = msg
            t1 = time.perf_counter()
            done_at = time.time()
            if answer is None:
                timeouts += 1
                continue
            if isinstance(answer, protocol.Reject):
                rejects += 1
                continue
            permit = answer.permit if isinstance(answer, protocol.Grant) else ECHO_PERMIT
            sock.send(protocol.Settle(permit=permit, status="not_sent").encode())
            sent_bytes = len(frame)
            if t_start <= done_at <= t_end:
                counted += 1
                rtts_us.append(int((t1 - t0) * 1e6))
        return {
            "permits": counted,
            "rtts_us": rtts_us,
            "rejects": rejects,
            "timeouts": timeouts,
            "request_bytes": sent_bytes,
            "answer_bytes": recv_bytes,
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    client = Client(args.name)
    print("READY", flush=True)
    try:
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            cmd = words[0]
            if cmd == "CONNECT":
                client.connect(words[1], words[2])
                print("READY", flush=True)
            elif cmd == "GO":
                t_start, t_end, t_stop = (float(w) for w in words[1:4])
                child_result(client.run(t_start, t_end, t_stop))
            elif cmd == "CLOSE":
                client.close()
                print("READY", flush=True)
            elif cmd == "EXIT":
                break
    finally:
        if client.sock is not None:
            client.sock.close(linger=0)
        client.ctx.term()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
