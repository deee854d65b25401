"""``keepa-fleet gateway``: the Keepa-compatible HTTP gateway for other programs on the key.

    keepa-fleet gateway [--listen HOST:PORT] [--max-wait S] [--clients FILE]
    keepa-fleet gateway --add-client NAME [--priority P]     prints the client's token

Serves until SIGTERM/SIGINT (exit 0). Bad flags or settings exit 78 naming the setting.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType

from common.cli import add_broker_argument
from common.config import load_settings
from common.errors import ConfigError
from gateway.clients import DEFAULT_PRIORITY, ClientStore, check_priority, is_loopback
from gateway.server import (
    CLIENT_TIMEOUT_S,
    DEFAULT_LISTEN,
    MAX_BODY_BYTES,
    MAX_REQUESTS,
    MAX_WAIT_S,
    Gateway,
    parse_listen,
)

log = logging.getLogger(__name__)

DESCRIPTION = """\
An HTTP server that speaks Keepa's API (/token, /product, /deal: same parameters, methods,
gzip, bodies and statuses) for programs that are not fleet workers: the unmodified keepa
package, notebooks, scripts. Each call asks the broker for a permit of the most it can cost,
is forwarded to Keepa with the real key (the key a client sends is ignored), is settled with
Keepa's envelope and answered as Keepa answered. /token is answered from the broker's
ledger. Loopback callers need no token (X-Keepa-Fleet-Client: NAME names them, default
"local"); any other address needs a bearer token from --add-client.
"""


def default_clients_file() -> Path:
    return Path(os.environ.get("FLEET_VAR", "var")) / "gateway-clients.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_broker_argument(parser)
    parser.add_argument(
        "--listen",
        default=os.environ.get("FLEET_GATEWAY_LISTEN", DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help=f"address to serve on (default $FLEET_GATEWAY_LISTEN, else {DEFAULT_LISTEN}); "
        "a non-loopback address needs at least one client from --add-client",
    )
    parser.add_argument(
        "--clients",
        default=None,
        metavar="FILE",
        help="the client store (default $FLEET_GATEWAY_CLIENTS, else "
        "$FLEET_VAR/gateway-clients.json, FLEET_VAR defaulting to ./var)",
    )
    parser.add_argument(
        "--add-client",
        default=None,
        metavar="NAME",
        help="register client NAME (or give it a new token), print its bearer token, exit",
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=DEFAULT_PRIORITY,
        help=f"with --add-client: the client's permit priority (default {DEFAULT_PRIORITY}; "
        "at most 2: the workers' commits outrank every client)",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=MAX_WAIT_S,
        metavar="S",
        help=f"longest wait for a permit before a 429, seconds (default {MAX_WAIT_S:g}); a "
        "client asks for less with the X-Keepa-Fleet-Wait-S header",
    )
    parser.add_argument(
        "--max-body",
        type=int,
        default=MAX_BODY_BYTES,
        metavar="BYTES",
        help=f"largest request body accepted (default {MAX_BODY_BYTES}); larger: 413",
    )
    parser.add_argument(
        "--max-requests",
        type=int,
        default=MAX_REQUESTS,
        metavar="N",
        help=f"requests served at once (default {MAX_REQUESTS}); more: 503",
    )
    parser.add_argument(
        "--client-timeout",
        type=float,
        default=CLIENT_TIMEOUT_S,
        metavar="S",
        help=f"a client's headers or body must arrive within this (default {CLIENT_TIMEOUT_S:g})",
    )


def run(args: argparse.Namespace) -> int:
    clients_path = Path(
        args.clients or os.environ.get("FLEET_GATEWAY_CLIENTS") or default_clients_file()
    )
    store = ClientStore(clients_path)
    if args.add_client is not None:
        check_priority(args.priority)
        token = store.add(args.add_client, args.priority)
        print(token)
        log.info(
            "client %s registered in %s (priority %d); its token was printed",
            args.add_client,
            clients_path,
            args.priority,
        )
        return 0
    for name, value, lo in (
        ("--max-wait", args.max_wait, 0.0),
        ("--client-timeout", args.client_timeout, 0.0),
    ):
        if not value > lo:
            raise ConfigError(name, "must be positive")
    if args.max_body < 0 or args.max_requests < 1:
        raise ConfigError("--max-body/--max-requests", "must be >= 0 / >= 1")
    try:
        host, _ = parse_listen(args.listen)
    except ValueError as exc:
        raise ConfigError("--listen", str(exc)) from None
    if not is_loopback(host) and not store.names:
        raise ConfigError(
            "--listen",
            f"{args.listen} is not a loopback address and no client is registered in "
            f"{clients_path}: add one with keepa-fleet gateway --add-client NAME",
        )
    settings = load_settings(args.config, overrides={"broker.address": args.broker or None})
    gateway = Gateway(
        settings,
        store,
        listen=args.listen,
        max_wait_s=args.max_wait,
        max_body_bytes=args.max_body,
        max_requests=args.max_requests,
        client_timeout_s=args.client_timeout,
    )
    try:
        gateway.bind()
    except OSError as exc:
        raise ConfigError("--listen", f"cannot listen on {args.listen}: {exc}") from None
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = threading.Thread(target=gateway.serve_forever, name="gateway-http", daemon=True)
    server.start()
    while not stopping.wait(1.0):
        if not server.is_alive():
            log.error("the gateway's HTTP thread ended: stopping")
            break
    log.info("gateway: signal received, stopping")
    gateway.close()
    return 0
