"""``keepa-fleet run``: the whole fleet under supervisord, in the foreground.

It works out the environment ``supervisord.conf`` reads (see the top of that file), clears
a stale socket or pid file left by a crash, and replaces itself with ``supervisord -n``, so
Ctrl-C reaches supervisord, which stops every program and exits. Without ``KEEPA_API_KEY``
the ``sim`` program runs the simulated Keepa API; with a key it stays stopped and the fleet
talks to the real API.

``keepa-fleet run --progress-only`` is the ``progress`` program inside supervisord: one
status line every few seconds on supervisord's stdout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common.config import Settings, load_settings
from common.errors import ConfigError
from common.health_view import health_line, problems_of
from common.status import StatusSnapshot
from common.storage import is_postgres_url

DEFAULT_WORKERS = 4
DEFAULT_METRICS_PORT = 9464
DEFAULT_WEB_LISTEN = "127.0.0.1:8080"  # the dashboard (web.cli's default)
PROGRESS_EVERY_S = 5.0
STATUS_TIMEOUT_S = 3.0
ROOT = Path(__file__).resolve().parent.parent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help=f"worker processes (default: $FLEET_WORKERS or {DEFAULT_WORKERS})",
    )
    parser.add_argument(
        "--var",
        default=None,
        metavar="DIR",
        help="directory for logs, socket, pid file and database (default: $FLEET_VAR or ./var)",
    )
    parser.add_argument(
        "--conf",
        default=str(ROOT / "supervisord.conf"),
        metavar="FILE",
        help="the supervisord configuration (default: the checkout's)",
    )
    parser.add_argument(
        "--every",
        type=float,
        default=PROGRESS_EVERY_S,
        metavar="S",
        help=f"seconds between progress lines (default {PROGRESS_EVERY_S})",
    )
    parser.add_argument(
        "--progress-only",
        action="store_true",
        help="only print progress lines (the 'progress' program in supervisord runs this)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the supervisord command and environment, start nothing",
    )


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.progress_only:
        return progress_loop(settings, args.every)
    if args.every <= 0:
        raise ConfigError("--every", "must be positive")
    env = fleet_environment(settings, workers=args.workers, var=args.var, every=args.every)
    conf = Path(args.conf).resolve()
    if not conf.is_file():
        raise ConfigError("--conf", f"no such file: {conf}")
    supervisord = str(Path(sys.executable).parent / "supervisord")
    if not os.access(supervisord, os.X_OK):
        supervisord = shutil.which("supervisord") or "supervisord"
    argv = [supervisord, "-n", "-c", str(conf)]
    var = Path(env["FLEET_VAR"])
    if args.dry_run:
        for key in sorted(env):
            if key.startswith(("FLEET_", "KEEPA_")) and key != "KEEPA_API_KEY":
                print(f"{key}={env[key]}")
        print(" ".join(argv))
        return 0
    clear_stale_files(var)
    where = "the embedded simulator" if settings.simulated else settings.base_url
    print(
        f"keepa-fleet: {env['FLEET_WORKERS']} workers, broker {env['FLEET_BROKER']}, "
        f"Keepa at {where}; logs in {var / 'log'}; Ctrl-C stops everything",
        flush=True,
    )
    print(f"keepa-fleet: dashboard at {web_url(env['FLEET_WEB_LISTEN'])}", flush=True)
    os.execve(supervisord, argv, env)
    return 1  # not reached


def fleet_environment(
    settings: Settings,
    *,
    workers: int | None = None,
    var: str | None = None,
    every: float = PROGRESS_EVERY_S,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment supervisord.conf expects, from the settings and the current env."""
    env = dict(os.environ if base is None else base)
    n = workers if workers is not None else int(env.get("FLEET_WORKERS") or DEFAULT_WORKERS)
    if n < 1 or n > 256:
        raise ConfigError("--workers", f"{n} is not between 1 and 256")
    var_dir = Path(var or env.get("FLEET_VAR") or "var").resolve()
    try:
        (var_dir / "log").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("--var", f"cannot create {var_dir / 'log'}: {exc}") from None
    exe = Path(sys.executable).parent / "keepa-fleet"
    env["KEEPA_FLEET"] = str(exe) if exe.exists() else (shutil.which("keepa-fleet") or str(exe))
    env["FLEET_VAR"] = str(var_dir)
    env["FLEET_WORKERS"] = str(n)
    env["FLEET_SIM_AUTOSTART"] = "true" if settings.simulated else "false"
    env["FLEET_SIM_PORT"] = str(settings.sim.port)
    env["FLEET_BROKER"] = settings.broker.address
    env["KEEPA_BASE_URL"] = settings.base_url
    env["FLEET_PROGRESS_EVERY"] = f"{every:g}"
    db = Path(settings.worker.db)
    if "FLEET_DB" not in env and str(db) == "var/fleet.db":
        db = var_dir / "fleet.db"
    # A postgresql:// URL is passed on as it is (a Path would fold its "//").
    env["FLEET_DB"] = (
        settings.worker.db if is_postgres_url(settings.worker.db) else str(db.resolve())
    )
    env.setdefault("FLEET_BROKER_METRICS_PORT", str(DEFAULT_METRICS_PORT))
    env.setdefault("FLEET_WEB_LISTEN", DEFAULT_WEB_LISTEN)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def web_url(listen: str) -> str:
    """The address to open for the dashboard listening on ``listen`` (HOST:PORT)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def clear_stale_files(var: Path) -> None:
    """Remove a pid file and socket left by a supervisord that is no longer running."""
    pidfile = var / "supervisord.pid"
    sock = var / "supervisor.sock"
    if pidfile.exists():
        try:
            pid = int(pidfile.read_text().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        if pid and _alive(pid) and b"supervisord" in _cmdline(pid):
            raise ConfigError(
                "--var",
                f"supervisord is already running there (pid {pid}); "
                f"stop it with: supervisorctl -c supervisord.conf shutdown",
            )
        pidfile.unlink(missing_ok=True)
    if sock.exists():
        sock.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


# --- progress lines ---------------------------------------------------------------------


def progress_loop(settings: Settings, every: float) -> int:
    from common.status_client import fetch_status

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    started = time.monotonic()
    while not stop.is_set():
        state = fetch_status(settings.broker.address, timeout=min(STATUS_TIMEOUT_S, every))
        elapsed = time.monotonic() - started
        print(progress_line(state, elapsed), flush=True)
        stop.wait(every)
    return 0


def progress_line(state: dict[str, Any] | None, elapsed_s: float) -> str:
    """One line: tokens, rate, workers, deals, 429s (read through ``StatusSnapshot``)."""
    stamp = time.strftime("%H:%M:%S")
    if state is None:
        return f"{stamp} [{elapsed_s:5.0f}s] broker not answering yet (starting, or down)"
    try:
        s = StatusSnapshot.from_dict(state)
    except (KeyError, TypeError) as exc:
        return f"{stamp} [{elapsed_s:5.0f}s] unreadable broker status ({exc!r})"
    t, p = s.tokens, s.permits
    # Gateway clients (role "client") are listed among the peers but are not workers.
    workers = [w for w in s.workers if w.get("role") != "client"]
    clients = len(s.clients)
    alive = sum(1 for w in workers if w.get("state") in ("alive", "waiting"))
    mode = " RECHARGE" if t.recharge_mode else ""
    problem = f" | {health_line(state)}" if problems_of(state) else ""
    return (
        f"{stamp} [{elapsed_s:5.0f}s] tokens {t.now}/{t.cap} "
        f"avail {t.available} rate {t.refill_rate}/step"
        f"{mode} | workers {alive}/{len(workers)}{f' + {clients} clients' if clients else ''}"
        f" | permits {p.granted} "
        f"granted, {p.queued} queued | deals {s.pipeline.get('deals_live', 0)} "
        f"live, {s.pipeline.get('candidates_waiting', 0)} candidates | 429s "
        f"{s.keepa.status_429} | kills {len(s.kills)}{problem}"
    )
