"""``keepa-fleet broker``: the one broker process (token ledger, permits, worker registry).

It logs what it does and why to stderr: grants at DEBUG; /token syncs, waits, kills and plan
changes at INFO/WARNING; a summary line every minute. SIGTERM (or Ctrl-C) drains: queued and
new requests are rejected with "draining", granted permits get a few seconds to settle,
then it exits 0. A second signal stops it at once.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

import zmq

from common import defaults
from common.config import load_settings

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CANNOT_BIND = 1
DRAIN_TIMEOUT_S = (
    defaults.DRAIN_TIMEOUT_S
)  # the default of --drain-timeout (broker.drain_timeout_s)

DESCRIPTION = """\
Run the broker: the only holder of the Keepa token state. Workers connect to it (DEALER),
say HELLO, heartbeat, and ask for permits before every Keepa call that costs tokens; the
broker grants them when its ledger (fed by Keepa's /token and by every settled call) says
the tokens are there, and kills workers that go silent or stall. Settings come from the
TOML file, the environment (FLEET_BROKER_*), and the flags below, which win.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--bind",
        default=None,
        metavar="ADDR",
        help="ZeroMQ address to bind (default: $FLEET_BROKER, else the broker.address "
        "setting, tcp://127.0.0.1:5555); a non-loopback address needs broker.curve_dir",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on 127.0.0.1:PORT (default: broker.metrics_port; 0 = off)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=None,
        metavar="S",
        help=f"on SIGTERM, seconds to wait for granted permits to settle (default: "
        f"broker.drain_timeout_s, {DRAIN_TIMEOUT_S:g})",
    )


def run(args: argparse.Namespace) -> int:
    # Imported here: `keepa-fleet --help` loads every subcommand's arguments, not its engine.
    from broker.server import Broker

    flags = {"broker.address": args.bind, "broker.metrics_port": args.metrics_port}
    settings = load_settings(args.config, overrides=flags)  # (an unset flag is None)
    drain = None if args.drain_timeout is None else max(0.0, args.drain_timeout)
    broker = Broker(settings, drain_timeout_s=drain)
    stop = threading.Event()
    signals_seen = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only flags here; the loop acts on them.
        signals_seen.append(signum)
        if len(signals_seen) == 1:
            broker.begin_drain()
        else:
            stop.set()
            broker.wake()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        return broker.serve(stop)
    except zmq.ZMQError as exc:
        log.error("cannot bind broker.address %s: %s", settings.broker.address, exc)
        return EXIT_CANNOT_BIND
