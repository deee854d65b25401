"""``keepa-fleet status``: ask the broker for its live state and show it.

One STATUS request on a fresh DEALER socket (linger 0), one poll with the timeout. Exit 0
when the broker answered, 2 when it did not in time. ``--json`` prints exactly one JSON
object (the broker's STATUS_REPLY state); without it, a readable summary: the health line
(``health: ok``, or each problem with since-when and what the fleet does), a tokens line, a
permits line, a Keepa line, a pipeline line and a workers table in the manner of
``supervisorctl status``. ``--watch N`` refreshes every N seconds until Ctrl-C.
``--check`` prints the health lines only and exits 1 while a problem is active (the Keepa
key or Keepa, a worker's storage: ``broker.health``), 0 when all is well, 2 without an answer.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from common.cli import add_broker_argument
from common.config import load_settings
from common.errors import ConfigError
from common.health_view import duration as _duration
from common.health_view import health_lines, problems_of
from common.health_view import seconds as _seconds
from common.status_client import DEFAULT_TIMEOUT_S, fetch_status

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_PROBLEM = 1  # --check: the broker answered and reports a problem
EXIT_NO_ANSWER = 2
CLEAR_SCREEN = "\033[2J\033[H"

DESCRIPTION = """\
Ask the broker for its live state: tokens (projected now, available, in flight, refill rate,
recharge mode, last /token sync), permits (granted, settled, expired, rejected, queued),
Keepa (syncs, 429s, errors), the pipeline figures the workers report, and every worker
(state, pid, heartbeat age, progress, permits held, tokens spent). Read-only.

Exit status: 0 the broker answered; 2 it did not answer within --timeout (or a usage error);
with --check, 1 when the broker reports a problem (the health line names it).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_broker_argument(parser)
    parser.add_argument(
        "--json",
        action="store_true",
        help="print exactly one JSON object (the whole state) instead of the summary",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="print the health lines only; exit 1 while a problem is active, 0 when none",
    )
    parser.add_argument(
        "--watch",
        type=float,
        default=None,
        metavar="N",
        help="refresh every N seconds until Ctrl-C",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"seconds to wait for the answer (default {DEFAULT_TIMEOUT_S:g}); exit 2 after it",
    )


def run(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise ConfigError("--timeout", "must be positive")
    if args.watch is not None and args.watch <= 0:
        raise ConfigError("--watch", "must be positive")
    settings = load_settings(args.config, overrides={"broker.address": args.broker or None})
    address = settings.broker.address
    curve_dir = settings.broker.curve_dir
    if args.watch is None:
        state = fetch_status(address, timeout=args.timeout, curve_dir=curve_dir)
        if getattr(args, "check", False):
            return check(state, address)
        return show(state, address, as_json=args.json)
    answered = False
    try:
        while True:
            state = fetch_status(address, timeout=args.timeout, curve_dir=curve_dir)
            if not args.json and sys.stdout.isatty():
                sys.stdout.write(CLEAR_SCREEN)
            answered = show(state, address, as_json=args.json) == EXIT_OK
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return EXIT_OK if answered else EXIT_NO_ANSWER


def show(state: dict[str, Any] | None, address: str, *, as_json: bool) -> int:
    if state is None:
        print(f"keepa-fleet status: no answer from the broker at {address}", file=sys.stderr)
        return EXIT_NO_ANSWER
    if as_json:
        print(json.dumps(state, sort_keys=True, default=str))
    else:
        print(format_status(state, address))
    return EXIT_OK


def check(state: dict[str, Any] | None, address: str) -> int:
    """``--check``: the health lines; 1 while a problem is active, 2 without an answer."""
    if state is None:
        print(f"keepa-fleet status: no answer from the broker at {address}", file=sys.stderr)
        return EXIT_NO_ANSWER
    print("\n".join(health_lines(state)))
    return EXIT_PROBLEM if problems_of(state) else EXIT_OK


# --- the human-readable summary ---------------------------------------------------------


def format_status(state: dict[str, Any], address: str = "") -> str:
    tokens = state.get("tokens") or {}
    permits = state.get("permits") or {}
    keepa = state.get("keepa") or {}
    pipeline = state.get("pipeline") or {}
    workers = state.get("workers") or []
    kills = state.get("kills") or []
    lines = [
        *health_lines(state),
        f"broker {state.get('broker_id', '?')} at {address or '?'}  version "
        f"{state.get('version', '?')}  up {_duration(state.get('uptime_s'))}"
        + ("  DRAINING" if state.get("draining") else ""),
        _tokens_line(tokens),
        f"permits   granted {permits.get('granted', 0)}  settled {permits.get('settled', 0)}  "
        f"expired {permits.get('expired', 0)}  rejected {permits.get('rejected', 0)}  "
        f"queued {permits.get('queued', 0)} (oldest {_seconds(permits.get('oldest_wait_s'))})  "
        f"in flight {permits.get('in_flight', 0)}",
        f"keepa     /token syncs {keepa.get('token_syncs', 0)}  429s "
        f"{keepa.get('status_429', 0)}  errors {keepa.get('errors', 0)}",
        _pipeline_line(pipeline, tokens),
        *_query_lines(pipeline.get("queries")),
    ]
    bad = state.get("bad_messages") or {}
    if bad:
        lines.append(
            "bad msgs  " + "  ".join(f"{code} {n}" for code, n in sorted(bad.items()) if n)
        )
    lines.append("")
    lines.extend(_workers_table(workers))
    lines.extend(_clients_lines(state))
    if kills:
        lines.append("")
        lines.append(f"kills ({len(kills)}, newest last):")
        for k in kills[-10:]:
            lines.append(
                f"  {k.get('worker', '?')}  {k.get('reason', '?')}  pid {k.get('pid', '?')}  "
                f"{k.get('action', '')}{' -> ' + k['outcome'] if k.get('outcome') else ''}  "
                f"{_seconds(k.get('age_s'))} ago"
            )
    return "\n".join(lines)


def _tokens_line(tokens: dict[str, Any]) -> str:
    if tokens.get("now") is None:
        return "tokens    unknown (no answer from Keepa yet)"
    mode = "  RECHARGE" if tokens.get("recharge_mode") else ""
    return (
        f"tokens    now {tokens.get('now')}/{tokens.get('cap', '?')}  available "
        f"{tokens.get('available')}  in flight {tokens.get('in_flight', 0)}  rate "
        f"{tokens.get('refill_rate', '?')}/step  next refill "
        f"{_seconds(_ms_to_s(tokens.get('refill_in_ms')))}  synced "
        f"{_seconds(tokens.get('last_sync_age_s'))} ago  spent {tokens.get('spent', 0)}  "
        f"unaccounted {tokens.get('unaccounted', 0)}{mode}"
    )


def _pipeline_line(pipeline: dict[str, Any], tokens: dict[str, Any]) -> str:
    if not pipeline:
        return "pipeline  (no worker has reported yet)"
    parts = []
    known = {
        "candidates_waiting": "candidates waiting",
        "deals_live": "deals live",
        "deals_committed": "deals committed",
    }
    for key, label in known.items():
        if key in pipeline:
            parts.append(f"{label} {pipeline[key]}")
    rejections = pipeline.get("rejections")
    if isinstance(rejections, dict):
        total = sum(v for v in rejections.values() if isinstance(v, int | float))
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(rejections.items()))
        parts.append(f"rejections {total:g} ({detail})" if detail else "rejections 0")
    elif rejections is not None:
        parts.append(f"rejections {rejections}")
    for key in ("feed_staleness_s", "feed_stale_s", "newest_deal_age_s"):
        if isinstance(pipeline.get(key), int | float):
            parts.append(f"feed {_duration(pipeline[key])} old")
            break
    if pipeline.get("feed_stale"):
        parts.append("FEED STALE")
    committed = pipeline.get("deals_committed")
    spent = tokens.get("spent")
    if isinstance(committed, int | float) and committed > 0 and isinstance(spent, int | float):
        parts.append(f"tokens per deal committed {spent / committed:.1f}")
    shown = {*known, "rejections", "feed_staleness_s", "feed_stale_s", "newest_deal_age_s"}
    shown.add("feed_stale")
    for key, value in sorted(pipeline.items()):
        if key not in shown and isinstance(value, int | float | str | bool):
            parts.append(f"{key} {value}")
    return "pipeline  " + "  ".join(parts)


def _query_lines(queries: Any) -> list[str]:
    """One line per deal query (the ``[[queries]]`` of the settings): what it found, what
    waits, what its deal pages cost, and when it last scanned."""
    if not isinstance(queries, dict):
        return []
    lines = []
    for name, q in sorted(queries.items()):
        if not isinstance(q, dict):
            continue
        age = q.get("last_scan_age_s")
        last = f"last scan {_duration(age)} ago" if isinstance(age, int | float) else "not scanned"
        lines.append(
            f"query     {name} (domain {q.get('domain', '?')})  deals live "
            f"{q.get('deals_live', 0)}  found {q.get('deals_found', 0)}  waiting "
            f"{q.get('candidates_waiting', 0)}  pages {q.get('pages', 0)}  tokens "
            f"{q.get('tokens', 0)}  {last}" + ("  FEED STALE" if q.get("feed_stale") else "")
        )
    return lines


WORKER_COLUMNS = (
    ("ID", "id"),
    ("STATE", "state"),
    ("PID", "pid"),
    ("HOST", "host"),
    ("ROLE", "role"),
    ("HEARTBEAT", "heartbeat_age_s"),
    ("PROGRESS", "progress"),
    ("PERMITS", "permits_held"),
    ("SPENT", "tokens_spent"),
    ("STAGE", "stage"),
    ("ITEMS", "items_done"),
)


def _workers_table(workers: list[dict[str, Any]]) -> list[str]:
    if not workers:
        return ["workers   none registered"]
    rows = [[h for h, _ in WORKER_COLUMNS]]
    for w in workers:
        row = []
        for _, key in WORKER_COLUMNS:
            value = w.get(key, "")
            if key == "heartbeat_age_s":
                value = _seconds(value)
            elif key == "state":
                value = str(value).upper()
            row.append("" if value is None else str(value))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(WORKER_COLUMNS))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _ms_to_s(ms: Any) -> float | None:
    return ms / 1000.0 if isinstance(ms, int | float) else None


# --- other programs on the key (gateway clients, permit API scripts) ---------------------

CLIENT_COLUMNS = (
    ("CLIENT", "id"),
    ("STATE", "state"),
    ("WAITING", "waiting"),
    ("GRANTED", "granted"),
    ("IN FLIGHT", "permits_held"),
    ("SPENT", "tokens_spent"),
    ("LAST CALL", "last_call_age_s"),
)


def _clients_lines(state: dict[str, Any]) -> list[str]:
    """A spending line (workers / clients / unaccounted) and a table of the clients, when
    any client has registered."""
    clients = state.get("clients") or []
    if not clients:
        return []
    tokens = state.get("tokens") or {}
    rows = [[h for h, _ in CLIENT_COLUMNS]]
    for c in clients:
        row = []
        for _, key in CLIENT_COLUMNS:
            value = c.get(key, "")
            if key == "last_call_age_s":
                value = _seconds(value) + (" ago" if isinstance(value, int | float) else "")
            elif key == "state":
                value = str(value).upper()
            row.append("" if value is None else str(value))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(CLIENT_COLUMNS))]
    table = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    spent = (
        f"spent     workers {tokens.get('spent_workers', 0)}  clients "
        f"{tokens.get('spent_clients', 0)}  unaccounted {tokens.get('unaccounted', 0)}"
    )
    return ["", spent, *table]
