"""The ``keepa-fleet`` command. Each subcommand lives with its owner and exposes
``add_arguments(parser)`` and ``run(args) -> exit code``:

==========  =======================  =================================================
command     module                   what it does
==========  =======================  =================================================
sim         ``sim.cli``              the simulated Keepa API on 127.0.0.1
broker      ``broker.cli``           the broker: token ledger, permits, worker registry
worker      ``workers.cli``          one worker process of the pipeline
status      ``broker.status_cli``    ask the broker for the live state
run         ``common.run``           the whole fleet under supervisord, in the foreground
keys        ``broker.keys``          create CURVE key pairs for non-loopback brokers
gateway     ``gateway.cli``          Keepa-compatible HTTP gateway for other programs
web         ``web.cli``              the web dashboard: deals, why not, the live fleet
db          ``common.db_copy``       ``db copy``: the database to another backend
==========  =======================  =================================================
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from common.errors import ConfigError, FleetError
from common.log import setup_logging
from common.orphans import exit_with_parent

# Named exit codes.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_NO_ANSWER = 2  # status: the broker did not answer in time (also argparse usage errors)
EXIT_CONFIG = 78  # sysexits EX_CONFIG: bad settings; supervisord should not loop on it
EXIT_INTERRUPTED = 130

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "sim": ("sim.cli", "run the simulated Keepa API (for the demo and the tests)"),
    "broker": ("broker.cli", "run the broker: token ledger, permits, worker registry"),
    "worker": ("workers.cli", "run one worker process of the deals pipeline"),
    "status": ("broker.status_cli", "show the broker's live state"),
    "run": ("common.run", "run the whole fleet under supervisord in the foreground"),
    "keys": ("broker.keys", "create CURVE key pairs for a broker on a non-loopback address"),
    "check": ("common.check", "check a Keepa key with /token (free): plan, clock, costs"),
    "queries": ("common.queries_cli", "list and check the deal queries, with their cost an hour"),
    "gateway": ("gateway.cli", "run the Keepa-compatible HTTP gateway for other programs"),
    "web": ("web.cli", "run the web dashboard: deals, why not, the live fleet"),
    "db": ("common.db_copy", "copy the database to another one (SQLite <-> PostgreSQL)"),
}

log = logging.getLogger("keepa_fleet")


def add_broker_argument(parser: argparse.ArgumentParser) -> None:
    """``--broker ADDR``, the ``broker.address`` to connect to (worker and status)."""
    parser.add_argument(
        "--broker",
        default=None,
        metavar="ADDR",
        help="the broker's ZeroMQ address (default: $FLEET_BROKER, else the broker.address "
        "setting, tcp://127.0.0.1:5555)",
    )


def chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (its first word that is not an option or the value of
    ``--config`` / ``--log-level``), or None."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in ("--config", "--log-level"):
            skip = True
        elif not word.startswith("-"):
            return word if word in SUBCOMMANDS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand. Only the module of the one ``argv`` names is
    imported (with ``argv`` None: every one): a broker or a worker process does not load
    the web stack, the PostgreSQL driver and the rest (tens of MB each process)."""
    chosen = None if argv is None else chosen_command(argv)
    parser = argparse.ArgumentParser(
        prog="keepa-fleet",
        description="Many worker processes sharing one Keepa API account through one token broker.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML settings file (default: $FLEET_CONFIG, else ./fleet.toml when present)",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING or ERROR (default: $FLEET_LOG_LEVEL or INFO)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if argv is not None and name != chosen:
            continue  # not run: its options are not needed (``keepa-fleet NAME --help`` has them)
        module = importlib.import_module(module_name)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    exit_with_parent()
    try:
        return int(args._module.run(args) or EXIT_OK)
    except ConfigError as exc:
        print(f"keepa-fleet {args.command}: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except FleetError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
