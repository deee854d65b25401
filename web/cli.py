"""``keepa-fleet web``: the dashboard — deals, why not, the live fleet — on one HTTP port.

    keepa-fleet web [--listen HOST:PORT] [--db PATH] [--broker ADDR] [--allow-actions]

Read-only by default: the database is opened ``mode=ro`` and the fleet is only asked for its
status. ``--allow-actions`` (with ``FLEET_WEB_TOKEN`` set, 16 characters or more) adds drain,
restart and kill buttons that act through supervisord. Bad flags exit 78 naming the flag.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from common.cli import add_broker_argument
from common.config import load_settings
from common.errors import ConfigError, StorageError
from common.storage import is_postgres_url, sqlite_path

if TYPE_CHECKING:
    from web.app import WebConfig

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8080"
LOOPBACK = ("127.0.0.1", "::1", "localhost")

DESCRIPTION = """\
The web dashboard: the deals grid (paged, sorted, filtered, exportable as CSV and JSON) with
each deal's price history, the why-not page (rejections by reason), and the fleet panel
(tokens, permits, workers, kills, health) updated every second from the broker's status.
Read-only unless --allow-actions is given with FLEET_WEB_TOKEN set.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_broker_argument(parser)
    parser.add_argument(
        "--listen",
        default=os.environ.get("FLEET_WEB_LISTEN", DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help=f"address to serve on (default $FLEET_WEB_LISTEN, else {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--db",
        default=None,
        metavar="PATH",
        help="the SQLite database to show (default: $FLEET_DB, else the worker.db setting)",
    )
    parser.add_argument(
        "--allow-actions",
        action="store_true",
        default=os.environ.get("FLEET_WEB_ACTIONS", "") in ("1", "true", "yes"),
        help="enable drain/restart/kill of workers (through supervisord), each request "
        "carrying the token in $FLEET_WEB_TOKEN (default: off; $FLEET_WEB_ACTIONS=true)",
    )
    parser.add_argument(
        "--supervisor-sock",
        default=None,
        metavar="PATH",
        help="supervisord's socket for the actions (default: $FLEET_VAR/supervisor.sock)",
    )


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("--listen", f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def build_config(args: argparse.Namespace) -> tuple[WebConfig, str, int]:
    """The app's configuration from the flags and settings; refuses what it cannot honour."""
    from common.status_client import fetch_status
    from web.actions import Actions, SupervisordRpc, check_token_setting
    from web.app import WebConfig
    from web.fleet import STATUS_TIMEOUT_S, FleetMonitor

    host, port = parse_listen(args.listen)
    settings = load_settings(
        args.config, overrides={"broker.address": args.broker or None, "worker.db": args.db}
    )
    target = settings.worker.db
    if is_postgres_url(target):
        raise ConfigError(
            "--db", "the dashboard reads an SQLite file; a postgresql:// database is not shown"
        )
    try:
        db = Path(sqlite_path(target))
    except StorageError as exc:
        raise ConfigError("--db", str(exc)) from None
    actions = Actions()
    if args.allow_actions:
        token = os.environ.get("FLEET_WEB_TOKEN", "")
        why = check_token_setting(token)
        if why:
            raise ConfigError("FLEET_WEB_TOKEN", f"--allow-actions needs a token that {why}")
        sock = args.supervisor_sock or str(
            Path(os.environ.get("FLEET_VAR", "var")) / "supervisor.sock"
        )
        actions = Actions(token=token, supervisor=SupervisordRpc(sock))
    if host not in LOOPBACK:
        log.warning(
            "the dashboard listens on %s, not a loopback address: anyone who reaches it sees "
            "the deals and the fleet",
            host,
        )
    address = settings.broker.address
    curve_dir = settings.broker.curve_dir
    monitor = FleetMonitor(
        lambda: fetch_status(address, timeout=STATUS_TIMEOUT_S, curve_dir=curve_dir)
    )
    return WebConfig(db=db, monitor=monitor, actions=actions, broker=address), host, port


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from web.app import create_app

    config, host, port = build_config(args)
    app = create_app(config)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            server_header=False,
            lifespan="on",
        )
    )
    log.info("dashboard on http://%s:%d (database %s)", host, port, config.db)
    server.run()
    return 0
