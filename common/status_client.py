"""Ask the broker for its live state (STATUS -> STATUS_REPLY): ``fetch_status``.

In ``common/`` because both sides read it: ``keepa-fleet status`` (``broker/status_cli.py``)
and the fleet runner's progress lines (``common/run.py``), which must not import the broker.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from common import protocol
from common.curve import setup_client
from common.errors import ProtocolError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0


def fetch_status(
    address: str, *, timeout: float = DEFAULT_TIMEOUT_S, curve_dir: str = ""
) -> dict[str, Any] | None:
    """The broker's live state, or None when it did not answer within ``timeout`` seconds."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        if curve_dir:
            setup_client(sock, curve_dir)
        sock.connect(address)
        sock.send(protocol.Status().encode(), zmq.NOBLOCK)
        deadline = time.monotonic() + timeout
        while True:
            remaining_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
            if not sock.poll(remaining_ms, zmq.POLLIN):
                return None
            frames = sock.recv_multipart(zmq.NOBLOCK)
            try:
                reply = protocol.decode(frames[-1], max_bytes=protocol.MAX_REPLY_BYTES)
            except ProtocolError as exc:
                log.warning("unreadable answer from the broker: %s", exc)
                continue
            if isinstance(reply, protocol.StatusReply):
                return reply.state
            log.warning("unexpected answer from the broker: %s", reply.TYPE)
    except zmq.Again:
        return None
    except zmq.ZMQError as exc:
        log.warning("cannot reach the broker at %s: %s", address, exc)
        return None
    finally:
        sock.close(linger=0)
