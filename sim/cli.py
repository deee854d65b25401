"""``keepa-fleet sim``: the simulated Keepa API, in the foreground until SIGTERM or SIGINT.

It logs one line of totals every ``--log-every`` seconds (each request at DEBUG, never with its
key) and exits 0 on SIGTERM/SIGINT. Flag defaults come from the settings (``sim`` section;
``--refill-period`` from ``keepa.refill_period_s``); a bad flag value is a usage error naming
the flag (exit 2), a bad setting a configuration error (exit 78).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from common.config import SECTIONS, env_name, load_settings
from sim.account import CAP_STEPS
from sim.catalog import DEFAULT_CATALOG_SIZE, DEFAULT_DEAL_INTERVAL_S
from sim.server import SimServer, is_loopback

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CANNOT_LISTEN = 1
LOG_EVERY_S = 60.0
DEFAULT_HOST = "127.0.0.1"
MIN_CATALOG_SIZE = 1_000
MAX_CATALOG_SIZE = 100_000_000

DESCRIPTION = """\
Run the simulated Keepa API (GET /token, GET /product, GET or POST /deal) on a loopback
address. It behaves like Keepa as docs/KEEPA.md describes it: per-key token accounts refilled
by --refill-rate tokens every --refill-period seconds up to 60 x rate; a request runs while the
balance is > 0 and may take it negative; 429 at <= 0; the token envelope on every response;
a deterministic catalog and a deal feed that keeps growing, both from --seed.

Any key of 8-128 characters [A-Za-z0-9_-] is an account (created with the --tokens balance
on first use); keys starting with "unpaid" get 402. It logs one line of totals every
--log-every seconds (each request at DEBUG, never with its key) and stops with exit status 0
on SIGTERM or SIGINT.

Admin API (for tests and benchmarks; not part of Keepa):
  GET  /_sim/state?key=K         the account's counters and balance (JSON)
  GET  /_sim/catalog?offset=O&limit=N   {"asins": [...]} in catalog order
  POST /_sim/plan?key=K&refill_rate=R   change the account's plan
  POST /_sim/consume?key=K&tokens=N     another program spends N tokens
  POST /_sim/tokens?key=K&tokens=N      set the balance
  POST /_sim/fault?kind=500|503|delay|malformed|drop&count=N[&delay_s=S][&path=/product]
  POST /_sim/feed?stale_s=N             every deal at least N seconds old (0: live)
"""


# Flags that override a setting ("section.name"); a flag left unset overrides nothing.
SETTING_FLAGS = {
    "--port": "sim.port",
    "--refill-rate": "sim.refill_rate",
    "--refill-period": "keepa.refill_period_s",
    "--tokens": "sim.tokens",
    "--seed": "sim.seed",
    "--latency-scale": "sim.latency_scale",
}


def _number(kind: type, lo: float | None, hi: float | None) -> Callable[[str], Any]:
    """An argparse type: a number within [lo, hi]; argparse names the flag in the error."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if lo is not None and value < lo:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {lo:g}")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"{value} is above the maximum {hi:g}")
        return value

    return parse


def _add_setting_flag(parser: argparse.ArgumentParser, flag: str, metavar: str, help: str) -> None:
    """A flag of ``SETTING_FLAGS``: typed and bounded like its setting, its help naming where
    the default comes from."""
    section, name = SETTING_FLAGS[flag].split(".")
    f = next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == name)
    source = (
        f"default: ${env_name(section, f)}, else {name} in the [{section}] table of the "
        f"settings file, else {f.default}"
    )
    parser.add_argument(
        flag,
        type=_number(type(f.default), f.metadata.get("lo"), f.metadata.get("hi")),
        default=None,
        metavar=metavar,
        help=f"{help} ({source})",
    )


def _host(text: str) -> str:
    if not is_loopback(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a loopback address (127.0.0.0/8, ::1 or localhost)"
        )
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    _add_setting_flag(parser, "--port", "P", "TCP port; 0 = any free one")
    parser.add_argument(
        "--host",
        type=_host,
        default=DEFAULT_HOST,
        metavar="ADDR",
        help=f"loopback address to listen on (default: {DEFAULT_HOST})",
    )
    _add_setting_flag(
        parser,
        "--refill-rate",
        "R",
        "tokens added per refill step for every account; the cap is 60 x R",
    )
    _add_setting_flag(
        parser,
        "--refill-period",
        "S",
        "seconds between refill steps; 60 on Keepa, shorter for tests",
    )
    _add_setting_flag(
        parser, "--tokens", "T", "starting balance of every new account; -1 = full, 60 x R"
    )
    _add_setting_flag(
        parser, "--seed", "N", "catalog and deal-feed seed: the same seed, the same data"
    )
    _add_setting_flag(
        parser,
        "--latency-scale",
        "X",
        "multiplies Keepa-like latency (offer requests 2-20 s, ~5 s); 0 = none",
    )
    parser.add_argument(
        "--offer-fail-rate",
        type=_number(float, 0.0, 1.0),
        default=0.0,
        metavar="F",
        help="fraction of offer refreshes that fail (such a product costs 1 token and comes "
        "back with offersSuccessful=false) (default: 0)",
    )
    parser.add_argument(
        "--strict-offer-cap",
        action="store_true",
        help="answer 400 to a /product request with offers and more than 20 ASINs (the cap "
        "Keepa's official clients document; Keepa itself accepted 50 in 2025) (default: off)",
    )
    parser.add_argument(
        "--catalog-size",
        type=_number(int, MIN_CATALOG_SIZE, MAX_CATALOG_SIZE),
        default=DEFAULT_CATALOG_SIZE,
        metavar="N",
        help=f"products in the catalog, generated lazily (default: {DEFAULT_CATALOG_SIZE})",
    )
    parser.add_argument(
        "--deal-interval",
        type=_number(float, 0.01, 3600.0),
        default=DEFAULT_DEAL_INTERVAL_S,
        metavar="S",
        help=f"a new deal every S seconds on average (default: {DEFAULT_DEAL_INTERVAL_S:g})",
    )
    parser.add_argument(
        "--log-every",
        type=_number(float, 0.1, 86_400.0),
        default=LOG_EVERY_S,
        metavar="S",
        help=f"seconds between lines of totals in the log (default: {LOG_EVERY_S:g})",
    )


def run(args: argparse.Namespace) -> int:
    overrides = {
        setting: getattr(args, flag.lstrip("-").replace("-", "_"))  # argparse's dest
        for flag, setting in SETTING_FLAGS.items()
    }
    settings = load_settings(args.config, overrides=overrides)
    s = settings.sim
    period = settings.keepa.refill_period_s
    server = SimServer(
        port=s.port,
        refill_rate=s.refill_rate,
        refill_period_s=period,
        tokens=None if s.tokens == -1 else s.tokens,
        seed=s.seed,
        latency_scale=s.latency_scale,
        host=args.host,
        catalog_size=args.catalog_size,
        deal_interval_s=args.deal_interval,
        offer_fail_rate=args.offer_fail_rate,
        strict_offer_cap=args.strict_offer_cap,
    )
    try:
        server.start()
    except OSError as exc:
        log.error("cannot listen on %s port %d: %s", args.host, s.port, exc.strerror or exc)
        return EXIT_CANNOT_LISTEN

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()  # only a flag; the loop below acts on it

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    start = "full" if s.tokens == -1 else str(s.tokens)
    log.info(
        "simulated Keepa API on %s: %d tokens every %gs (cap %d, start %s), seed %d, "
        "latency x%g, %d products, a deal every %gs",
        server.url,
        s.refill_rate,
        period,
        CAP_STEPS * s.refill_rate,
        start,
        s.seed,
        s.latency_scale,
        args.catalog_size,
        args.deal_interval,
    )
    previous = server.totals()
    try:
        while not stop.wait(args.log_every):
            previous = _log_totals(server, previous)
    finally:
        server.stop()
    _log_totals(server, previous, final=True)
    return EXIT_OK


def _log_totals(server: SimServer, previous: dict[str, Any], final: bool = False) -> dict[str, Any]:
    t = server.totals()
    statuses = " ".join(f"{k}:{v}" for k, v in t["statuses"].items()) or "none"
    log.info(
        "%s%d requests (+%d), %d tokens consumed (+%d), %d accounts, statuses %s",
        "stopped: " if final else "",
        t["requests"],
        t["requests"] - previous["requests"],
        t["tokens_consumed"],
        t["tokens_consumed"] - previous["tokens_consumed"],
        t["accounts"],
        statuses,
    )
    return t
