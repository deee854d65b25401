"""``keepa-fleet worker``: one worker process of the deals pipeline.

Settings come from the TOML file and the environment; the flags below win. The database is
opened first: a path that cannot be created or written exits with ``EXIT_STORAGE`` (73)
before the worker ever connects to the broker, so supervisord gives up after its start
retries instead of looping. Exit codes: see ``workers.runtime``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from common.cli import add_broker_argument
from common.config import load_settings
from common.curve import require_curve_for
from common.errors import ConfigError, StorageError
from common.procinfo import this_host

log = logging.getLogger(__name__)

ROLES = ("deals", "ingest", "refresh", "all")
MAX_ID_CHARS = 128  # the broker refuses longer worker ids

DESCRIPTION = """\
Run one worker: it connects to the broker (DEALER), says HELLO, heartbeats, and runs the
pipeline stages of its role, asking the broker for a permit before every Keepa call that
costs tokens. Without a live broker it makes no such call. SIGTERM: the call in hand
finishes, claims are given back, settles are flushed, BYE, exit 0.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_broker_argument(parser)
    parser.add_argument(
        "--role",
        default=None,
        choices=ROLES,
        help="which pipeline stages to run (default: the worker.role setting, all)",
    )
    parser.add_argument(
        "--db",
        default=None,
        metavar="PATH|URL",
        help="the database: an SQLite file or a postgresql:// URL (default: $FLEET_DB, "
        "else the worker.db setting)",
    )
    parser.add_argument(
        "--id",
        default=None,
        metavar="NAME",
        help="this worker's name at the broker and on its database claims "
        "(default: HOST:PID; supervisord passes worker_NN)",
    )


def worker_name(given: str | None) -> str:
    name = given if given is not None else f"{this_host()}:{os.getpid()}"
    if not name or len(name) > MAX_ID_CHARS or not name.isprintable():
        raise ConfigError("--id", f"{name!r} must be 1..{MAX_ID_CHARS} printable characters")
    return name


def run(args: argparse.Namespace) -> int:
    # Imported here: `keepa-fleet --help` loads every subcommand's arguments, not its engine.
    from common.keepa import KeepaClient
    from common.storage import Storage
    from workers.runtime import EXIT_STORAGE, run_worker
    from workers.stages import build_stages
    from workers.storage_gate import gate_storage

    flags = {"broker.address": args.broker, "worker.role": args.role, "worker.db": args.db}
    settings = load_settings(args.config, overrides=flags)  # (an unset flag is None)
    worker_id = worker_name(args.id)
    require_curve_for(settings.broker.address, settings.broker.curve_dir)
    role = settings.worker.role
    try:
        storage = Storage.open(settings.worker.db)
    except StorageError as exc:
        print(f"keepa-fleet worker: {exc}", file=sys.stderr, flush=True)
        return EXIT_STORAGE
    keepa = KeepaClient.from_settings(settings)
    try:
        return run_worker(
            settings,
            worker_id=worker_id,
            role=role,
            make_stages=lambda permits: build_stages(
                role,
                settings,
                keepa,
                permits,
                gate_storage(storage, permits),  # issue 12
            ),
        )
    finally:
        keepa.close()
        storage.close()
