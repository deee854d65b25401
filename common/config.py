"""Settings: one object, read from a TOML file and the environment, checked at start.

Precedence (last wins): built-in defaults < the TOML file < environment variables < command
line flags (passed in as ``overrides``). The TOML file is ``--config``/``FLEET_CONFIG``, else
``fleet.toml`` in the current directory when it exists. Every setting lives in a section and
has an environment variable: ``FLEET_<SECTION>_<NAME>`` unless it has a well-known name
(``KEEPA_API_KEY``, ``KEEPA_BASE_URL``, ``FLEET_BROKER``, ``FLEET_DB``,
``KEEPA_REFILL_PERIOD_S``). A bad value fails at start with a ConfigError naming the setting
and where the value came from.

The defaults run the embedded simulator: no key means ``keepa.api_key`` is the simulator's
demo key and ``keepa.base_url`` points at the local ``keepa-fleet sim``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common import defaults
from common.errors import ConfigError
from common.fields import coerce_setting as _coerce

DEFAULT_CONFIG_FILE = "fleet.toml"
SIM_DEFAULT_PORT = 8787
SIM_DEMO_KEY = "simulated-demo-key"


def _field(
    default: Any,
    help: str,
    *,
    env: str | None = None,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[str, ...] | None = None,
    secret: bool = False,
) -> Any:
    meta = {"help": help, "env": env, "lo": lo, "hi": hi, "choices": choices, "secret": secret}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class KeepaSettings:
    api_key: str = _field(
        "", "Keepa API key; empty runs on the embedded simulator", env="KEEPA_API_KEY", secret=True
    )
    base_url: str = _field(
        "",
        "Keepa API base URL; empty means https://api.keepa.com with a "
        "key, else the local simulator",
        env="KEEPA_BASE_URL",
    )
    domain: int = _field(1, "Amazon domain id (1 com, 2 co.uk, 3 de, ...)", lo=1, hi=12)
    connect_timeout_s: float = _field(5.0, "HTTP connect timeout, seconds", lo=0.05, hi=120)
    read_timeout_s: float = _field(
        60.0, "HTTP read timeout, seconds (offer calls take up to 20 s)", lo=0.05, hi=600
    )
    max_asins_with_offers: int = _field(
        20,
        "ASINs per /product call with offers: Keepa's official clients document 20 (Keepa "
        "accepted 50 in 2025; raise it at your own risk)",
        lo=1,
        hi=100,
    )
    refill_period_s: float = _field(
        defaults.REFILL_PERIOD_S,
        "Keepa's refill step, seconds (60 on Keepa)",
        env="KEEPA_REFILL_PERIOD_S",
        lo=0.05,
        hi=3600,
    )


@dataclasses.dataclass(frozen=True)
class BrokerSettings:
    address: str = _field(
        "tcp://127.0.0.1:5555",
        "broker ZeroMQ address (bind for the broker, connect for workers and status)",
        env="FLEET_BROKER",
    )
    heartbeat_s: float = _field(1.0, "heartbeat interval H, seconds", lo=0.01, hi=60)
    liveness: int = _field(5, "heartbeats missed before a worker counts as dead", lo=2, hi=100)
    stall_s: float = _field(
        180.0,
        "progress frozen this long while not waiting on the broker = stalled, seconds",
        lo=0.1,
        hi=86400,
    )
    kill_grace_s: float = _field(5.0, "SIGTERM to SIGKILL grace, seconds", lo=0.05, hi=600)
    lease_ttl_s: float = _field(
        defaults.LEASE_TTL_S,
        "permit lease; unsettled after this = expired, seconds",
        lo=0.1,
        hi=3600,
    )
    soft_floor: int = _field(
        defaults.SOFT_FLOOR,
        "a grant that takes available below this starts recharge",
        lo=0,
        hi=1_000_000,
    )
    resume_at: int = _field(
        defaults.RESUME_AT,
        "recharge ends when available reaches this (clamped to the cap)",
        lo=0,
        hi=1_000_000,
    )
    # (why 240: common/defaults.py)
    max_deficit: int = _field(
        defaults.MAX_DEFICIT,
        "how far below zero a grant may take available (a grant still needs available > 0)",
        lo=0,
        hi=1_000_000,
    )
    sync_min_interval_s: float = _field(
        1.0, "never call /token more often than this, seconds", lo=0.0, hi=3600
    )
    sync_gap_s: float = _field(
        300.0, "sync when the newest observation is older than this, seconds", lo=0.1, hi=86400
    )
    short_wait_s: float = _field(
        5.0, "sync before telling a requester to wait longer than this, seconds", lo=0.0, hi=3600
    )
    recheck_max_s: float = _field(
        60.0,
        "while the key or Keepa has a problem, re-check /token at least this often, seconds",
        lo=0.1,
        hi=3600,
    )
    max_workers: int = _field(1000, "registered workers at most", lo=1, hi=100_000)
    max_queued_per_worker: int = _field(
        defaults.MAX_QUEUED_PER_WORKER, "queued requests per worker at most", lo=1, hi=10_000
    )
    drain_timeout_s: float = _field(
        defaults.DRAIN_TIMEOUT_S,
        "on SIGTERM, how long granted permits get to settle, seconds",
        lo=0.0,
        hi=3600,
    )
    metrics_port: int = _field(0, "Prometheus metrics port on 127.0.0.1; 0 = off", lo=0, hi=65535)
    curve_dir: str = _field(
        "",
        "directory made by `keepa-fleet keys`; required to bind a non-loopback address "
        "(CURVE encryption and client authentication)",
    )


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    db: str = _field(
        "var/fleet.db", "the database: an SQLite file or a postgresql:// URL", env="FLEET_DB"
    )
    role: str = _field("all", "pipeline role", choices=("deals", "ingest", "refresh", "all"))
    ingest_batch: int = _field(50, "candidates peeked per /product call", lo=1, hi=100)
    commit_batch: int = _field(5, "survivors committed per full-data call", lo=1, hi=100)
    refresh_batch: int = _field(50, "stalest deals refreshed per call", lo=1, hi=100)
    claim_ttl_s: float = _field(
        600.0, "a claim not finished in this time comes back, seconds", lo=1, hi=86400
    )
    refresh_after_s: float = _field(
        3600.0, "a deal older than this is due a refresh, seconds", lo=0, hi=30 * 86400
    )
    deals_interval_s: float = _field(
        60.0, "pause between /deal scans when nothing is new, seconds", lo=0.0, hi=86400
    )
    stale_feed_s: float = _field(
        86400.0, "warn when the newest deal is older than this, seconds", lo=1, hi=30 * 86400
    )
    grant_wait_s: float = _field(
        defaults.GRANT_WAIT_S, "how long a worker waits for a grant, seconds", lo=0.1, hi=86400
    )
    cost_per_product: float = _field(
        5.0, "initial estimate of tokens per product for offers=20", lo=0.1, hi=1000
    )
    offers: int = _field(
        20, "offers=N for commits (and peeks with peek_offers) (20..100)", lo=20, hi=100
    )
    spend_spare: bool = _field(
        True,
        "refresh deals early on tokens the next refill would lose to the cap (use it or lose it)",
    )
    peek_offers: bool = _field(
        False,
        "peek with offers=N (6-12 tokens a product) instead of stats only (1 token); "
        "only for filters that need offer data",
    )
    stats_days: int = _field(90, "stats=N days", lo=1, hi=3650)
    reconnect_max_s: float = _field(30.0, "cap of the reconnect backoff, seconds", lo=0.1, hi=3600)


@dataclasses.dataclass(frozen=True)
class FilterSettings:
    max_sales_rank: int = _field(
        200_000, "reject when the sales rank is above this", lo=1, hi=10**9
    )
    min_drop_percent: float = _field(
        15.0,
        "reject when the price is less than this far below its 90-day average, percent",
        lo=0,
        hi=100,
    )
    min_profit: int = _field(
        300,
        "reject when the estimated profit is below this, smallest currency unit",
        lo=-(10**9),
        hi=10**9,
    )
    max_offers: int = _field(30, "reject when more competing new offers than this", lo=0, hi=10_000)
    fee_percent: float = _field(
        15.0, "marketplace fee used by the profit estimate, percent", lo=0, hi=100
    )
    price_type: int = _field(
        1,
        "the price type the drop and profit filters judge (1 NEW, 2 USED, 0 AMAZON, ...)",
        lo=0,
        hi=35,
    )


@dataclasses.dataclass(frozen=True)
class SimSettings:
    port: int = _field(SIM_DEFAULT_PORT, "simulator port on 127.0.0.1", lo=0, hi=65535)
    refill_rate: int = _field(250, "simulated plan, tokens per refill", lo=1, hi=100_000)
    tokens: int = _field(
        -1, "simulated starting balance; -1 = full (60 x rate)", lo=-(10**9), hi=10**9
    )
    seed: int = _field(1, "catalog seed", lo=0, hi=2**31)
    latency_scale: float = _field(1.0, "multiplies Keepa-like latency; 0 = none", lo=0, hi=100)


@dataclasses.dataclass(frozen=True)
class Settings:
    keepa: KeepaSettings = dataclasses.field(default_factory=KeepaSettings)
    broker: BrokerSettings = dataclasses.field(default_factory=BrokerSettings)
    worker: WorkerSettings = dataclasses.field(default_factory=WorkerSettings)
    filters: FilterSettings = dataclasses.field(default_factory=FilterSettings)
    sim: SimSettings = dataclasses.field(default_factory=SimSettings)
    source: str = ""  # the TOML file read, if any
    # The deal queries ([[queries]], common.queries.Query); empty = the built-in one.
    queries: tuple[Any, ...] = ()

    @property
    def simulated(self) -> bool:
        """True when no real key is set: the fleet runs on the embedded simulator."""
        return not self.keepa.api_key or self.keepa.api_key == SIM_DEMO_KEY

    @property
    def api_key(self) -> str:
        return self.keepa.api_key or SIM_DEMO_KEY

    @property
    def base_url(self) -> str:
        if self.keepa.base_url:
            return self.keepa.base_url.rstrip("/")
        if self.simulated:
            return f"http://127.0.0.1:{self.sim.port}"
        return "https://api.keepa.com"

    def __repr__(self) -> str:  # never show the key
        return f"Settings(source={self.source!r}, simulated={self.simulated})"


SECTIONS: dict[str, type] = {
    "keepa": KeepaSettings,
    "broker": BrokerSettings,
    "worker": WorkerSettings,
    "filters": FilterSettings,
    "sim": SimSettings,
}


def env_name(section: str, f: dataclasses.Field[Any]) -> str:
    return f.metadata.get("env") or f"FLEET_{section.upper()}_{f.name.upper()}"


def load_settings(
    config: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings. ``overrides`` maps ``"section.name"`` to a value (CLI flags)."""
    env = os.environ if env is None else env
    path: Path | None = None
    if config is None:
        config = env.get("FLEET_CONFIG") or None
        if config is None and Path(DEFAULT_CONFIG_FILE).is_file():
            config = DEFAULT_CONFIG_FILE
    data: dict[str, Any] = {}
    if config is not None:
        path = Path(config)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("--config", f"no such file: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("--config", f"cannot read {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from None
    unknown_sections = set(data) - set(SECTIONS) - {QUERIES_SECTION}
    if unknown_sections:
        raise ConfigError(
            sorted(unknown_sections)[0], f"unknown section in {path}; known: {', '.join(SECTIONS)}"
        )
    # A flag left unset arrives as None: it overrides nothing.
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(section, f"must be a table in {path}")
        names = {f.name for f in dataclasses.fields(cls)}
        for key in table:
            if key not in names:
                raise ConfigError(f"{section}.{key}", f"unknown setting in {path}")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f"{section}.{f.name}"
            raw: Any = dataclasses.MISSING
            origin = "default"
            if f.name in table:
                raw, origin = table[f.name], str(path)
            ev = env_name(section, f)
            if env.get(ev, "") != "":
                raw, origin = env[ev], f"environment {ev}"
            if overrides.get(name) is not None:
                raw, origin = overrides.pop(name), "command line"
            if raw is dataclasses.MISSING:
                continue
            values[f.name] = _coerce(name, f, raw, origin)
        sections[section] = cls(**values)
    if overrides:
        raise ConfigError(sorted(overrides)[0], "unknown setting")
    settings = Settings(**sections, source=str(path) if path else "")
    _check_consistency(settings)
    return _with_queries(settings, data.get(QUERIES_SECTION), path)


# --- [[queries]]: the deal queries (common.queries) --------------------------------------
QUERIES_SECTION = "queries"


def _with_queries(settings: Settings, tables: Any, path: Path | None) -> Settings:
    """The settings with their deal queries checked and built (ConfigError naming the file,
    the query and the key). Warnings (options Keepa ignores) are logged once here."""
    import logging

    from common.queries import load_queries

    queries = load_queries(
        tables,
        config_path=path,
        filters=settings.filters,
        default_domain=settings.keepa.domain,
        every_s=settings.worker.deals_interval_s,
        stale_feed_s=settings.worker.stale_feed_s,
    )
    for q in queries:
        for warning in q.warnings:
            logging.getLogger("common.queries").warning("%s", warning)
    return dataclasses.replace(settings, queries=queries)


def _check_consistency(s: Settings) -> None:
    addr = s.broker.address
    if not addr.startswith(("tcp://", "ipc://", "inproc://")):
        raise ConfigError(
            "broker.address", f"{addr!r} is not a ZeroMQ address (tcp://HOST:PORT or ipc://PATH)"
        )
    url = s.keepa.base_url
    if url and not url.startswith(("http://", "https://")):
        raise ConfigError("keepa.base_url", f"{url!r} is not an http(s) URL")
    if s.worker.commit_batch > s.worker.ingest_batch:
        raise ConfigError("worker.commit_batch", "is larger than worker.ingest_batch")
    if s.broker.lease_ttl_s <= s.keepa.read_timeout_s:
        raise ConfigError(
            "broker.lease_ttl_s",
            f"{s.broker.lease_ttl_s} must be longer than "
            f"keepa.read_timeout_s ({s.keepa.read_timeout_s}): a call in "
            "flight would be counted expired",
        )


def describe() -> list[tuple[str, str, str, str]]:
    """(setting, default, environment variable, help) for every setting: the README table."""
    rows = []
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else ""
            rows.append(
                (f"{section}.{f.name}", repr(default), env_name(section, f), f.metadata["help"])
            )
    return rows
