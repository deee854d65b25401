"""A whole fleet of real processes for end-to-end and fault tests: the simulator, the
broker and workers, each a `keepa-fleet` subprocess, configured through the environment
exactly as supervisord would. The simulator and the broker bind port 0 and the fleet reads
the address each got from its log; a restarted broker binds the address its workers know,
retried if another process took the port meanwhile. ``check_invariants`` states what must hold
after any run or fault."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import requests
from support import (
    BROKER_ADDRESS_LOGGED,
    EXIT_CANNOT_BIND,
    SIM_URL_LOGGED,
    BindRace,
    Processes,
    fleet_command,
    logged,
    retry_bind_race,
    unused_port,
    wait_until,
)

from broker.status_cli import fetch_status
from common.config import SIM_DEMO_KEY, BrokerSettings

MAX_DEFICIT = BrokerSettings().max_deficit

FAST_ENV = {
    "FLEET_BROKER_HEARTBEAT_S": "0.2",
    "FLEET_BROKER_LIVENESS": "5",
    "FLEET_BROKER_KILL_GRACE_S": "1",
    "FLEET_BROKER_SYNC_MIN_INTERVAL_S": "0.2",
    "FLEET_BROKER_SHORT_WAIT_S": "1",
    "FLEET_BROKER_STALL_S": "20",
    "FLEET_WORKER_DEALS_INTERVAL_S": "1",
    "FLEET_WORKER_RECONNECT_MAX_S": "0.5",
    "FLEET_WORKER_GRANT_WAIT_S": "30",
    "FLEET_WORKER_CLAIM_TTL_S": "5",
    "FLEET_KEEPA_READ_TIMEOUT_S": "10",
    "FLEET_BROKER_LEASE_TTL_S": "15",
}

# ASINs ever queued that are now neither a deal, a rejection nor a candidate.
UNACCOUNTED_SQL = (
    "select count(*) from seen s where not exists (select 1 from deals d where "
    "d.domain = s.domain and d.asin = s.asin) and not exists (select 1 from rejections "
    "r where r.domain = s.domain and r.asin = s.asin) and not exists (select 1 from "
    "candidates c where c.domain = s.domain and c.asin = s.asin)"
)


class Fleet:
    def __init__(
        self,
        processes: Processes,
        tmp_path: Path,
        *,
        refill_rate: int = 200,
        refill_period_s: float = 0.5,
        tokens: int | None = None,
        latency_scale: float = 0.0,
        env: dict[str, str] | None = None,
        offer_fail_rate: float = 0.0,
        key: str = SIM_DEMO_KEY,
    ) -> None:
        self.processes = processes
        self.tmp = tmp_path
        # Known once each has started (it binds port 0 and logs what it got).
        self.sim_port = 0
        self.sim_url = ""
        self.broker_address = ""
        self.db = tmp_path / "fleet.db"
        self.key = key
        self.refill_rate = refill_rate
        self.refill_period_s = refill_period_s
        self.tokens = tokens
        self.latency_scale = latency_scale
        self.offer_fail_rate = offer_fail_rate
        self.env = {
            **FAST_ENV,
            "KEEPA_REFILL_PERIOD_S": str(refill_period_s),
            "FLEET_DB": str(self.db),
            "FLEET_LOG_LEVEL": "INFO",
            **({"KEEPA_API_KEY": key} if key != SIM_DEMO_KEY else {}),
            **(env or {}),
        }
        for name in ("KEEPA_API_KEY", "FLEET_CONFIG"):
            os.environ.pop(name, None)
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.roles: dict[str, str] = {}
        self.broker: subprocess.Popen[bytes] | None = None
        # After a broker restart: the simulator's consumption (less external) when the
        # broker running now started (its spend counters start there); None before.
        self.consumed_base: int | None = None

    # --- processes ----------------------------------------------------------------------

    def reserve_sim_port(self) -> None:
        """Keepa's address before the simulator runs (a broker started while Keepa is down):
        the simulator binds it when started. Losing the port in between is a race nobody
        else on this loopback provokes; the start then fails loudly (it is not retried: the
        broker already knows the address)."""
        self.sim_port = unused_port()
        self.sim_url = f"http://127.0.0.1:{self.sim_port}"
        self.env["KEEPA_BASE_URL"] = self.sim_url

    def start_sim(self) -> None:
        argv = fleet_command(
            "sim",
            "--port",
            str(self.sim_port),
            "--refill-rate",
            str(self.refill_rate),
            "--refill-period",
            str(self.refill_period_s),
            "--seed",
            "7",
            "--latency-scale",
            str(self.latency_scale),
            # Keepa's documented cap of 20 ASINs with offers: code that breaks it fails here.
            "--strict-offer-cap",
            # Keepa's 120-s deal cache on this fleet's clock (the step shortened, so it is too).
            "--deal-cache",
            str(120.0 * self.refill_period_s / 60.0),
        )
        if self.tokens is not None:
            argv += ["--tokens", str(self.tokens)]
        if self.offer_fail_rate:
            argv += ["--offer-fail-rate", str(self.offer_fail_rate)]
        # The simulator says where it listens at INFO (a level above hides it: logged() fails).
        proc = self.processes.start("sim", argv, env=self.env)
        url = logged(self.processes, "sim", proc, SIM_URL_LOGGED)
        assert not self.sim_port or url == self.sim_url, (url, self.sim_url)
        self.sim_url = url
        self.sim_port = int(self.sim_url.rsplit(":", 1)[1])
        self.env["KEEPA_BASE_URL"] = self.sim_url
        wait_until(
            lambda: requests.get(f"{self.sim_url}/token", params={"key": self.key}, timeout=2).ok,
            20,
            interval=0.1,
            message="simulator up",
        )

    def start_broker(
        self, name: str = "broker", env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """The broker: the first on port 0 (its address read from its log), a restarted one
        on the address the workers know (started again if that port was taken meanwhile)."""
        assert self.sim_url, "start the simulator first: the broker asks it for /token"
        if not self.broker_address:
            proc = self.processes.start(
                name,
                fleet_command("broker", "--bind", "tcp://127.0.0.1:0"),
                env={**self.env, **(env or {})},
            )
            self.broker_address = logged(self.processes, name, proc, BROKER_ADDRESS_LOGGED)
            self.env["FLEET_BROKER"] = self.broker_address
            self.broker = proc
        else:
            self.broker = retry_bind_race(lambda: self._restart_broker(name, env))
        wait_until(
            lambda: self.status() is not None,
            20,
            interval=0.1,
            message=lambda: f"broker answering; log:\n{self.processes.log(name)}",
        )
        return self.broker

    def _restart_broker(self, name: str, env: dict[str, str] | None) -> subprocess.Popen[bytes]:
        proc = self.processes.start(
            name,
            fleet_command("broker", "--bind", self.broker_address),
            env={**self.env, **(env or {})},
        )

        def bound_or_refused() -> bool:
            if proc.poll() is not None:
                return True
            return self.status() is not None

        wait_until(bound_or_refused, 20, interval=0.1, message=f"{name} answering")
        if proc.returncode == EXIT_CANNOT_BIND and "cannot bind" in self.processes.log(name):
            raise BindRace(f"{self.broker_address} taken before {name} bound it")
        return proc

    def start_worker(
        self,
        worker_id: str,
        role: str = "all",
        env: dict[str, str] | None = None,
        db: str | None = None,
    ) -> subprocess.Popen[bytes]:
        proc = self.processes.start(
            worker_id,
            fleet_command(
                "worker",
                "--id",
                worker_id,
                "--role",
                role,
                "--broker",
                self.broker_address,
                "--db",
                str(self.db) if db is None else db,
            ),
            env={**self.env, **(env or {})},
        )
        self.workers[worker_id] = proc
        self.roles[worker_id] = role
        return proc

    def restart_worker(self, worker_id: str) -> subprocess.Popen[bytes]:
        """What supervisord (autorestart=true) does for an exited worker: start it again
        under the same id and role (the old process must have exited)."""
        old = self.workers[worker_id]
        assert old.poll() is not None, f"{worker_id} (pid {old.pid}) is still running"
        return self.start_worker(worker_id, self.roles[worker_id])

    def start(self, workers: int = 3, roles: tuple[str, ...] = ()) -> None:
        """The simulator, the broker and ``workers`` workers ``w0``, ``w1``, ... (role
        ``roles[i]`` when given, else all)."""
        self.start_sim()
        self.start_broker()
        for i in range(workers):
            self.start_worker(f"w{i}", roles[i] if i < len(roles) else "all")

    # --- observation --------------------------------------------------------------------

    def status(self, timeout: float = 2.0) -> dict[str, Any] | None:
        return fetch_status(self.broker_address, timeout=timeout)

    def sim_state(self) -> dict[str, Any]:
        resp = requests.get(f"{self.sim_url}/_sim/state", params={"key": self.key}, timeout=5)
        resp.raise_for_status()
        return dict(resp.json())

    def sim_admin(self, what: str, **params: Any) -> None:
        resp = requests.post(
            f"{self.sim_url}/_sim/{what}", params={"key": self.key, **params}, timeout=5
        )
        resp.raise_for_status()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if not self.db.exists():
            return []
        conn = sqlite3.connect(self.db, timeout=30)
        try:
            # A SQLite error (a missing table, a typo) raises: an invariant must not pass on it.
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def count(self, table: str) -> int:
        rows = self.query(f"select count(*) from {table}")
        return int(rows[0][0]) if rows else 0

    def spend_counters(self) -> tuple[int, int, int]:
        """The simulator's (tokens consumed, /product calls, /deal calls)."""
        s = self.sim_state()
        return s["tokens_consumed"], s["product_calls"], s["deal_calls"]

    def frozen(self, window_s: float, interval: float = 0.05) -> tuple[int, int, int] | None:
        """``spend_counters()`` if they stand still for ``window_s`` (an observation window,
        not a stand-in wait), else None as soon as one moves."""
        first = self.spend_counters()
        end = time.monotonic() + window_s
        while time.monotonic() < end:
            if self.spend_counters() != first:
                return None
            time.sleep(interval)
        return first

    # --- invariants ---------------------------------------------------------------------

    def check_invariants(self, *, max_deficit: int = MAX_DEFICIT) -> dict[str, Any]:
        """What must hold after any run: no 429 caused by the fleet, the balance never below
        -max_deficit, a sound database in which every candidate is accounted for."""
        sim = self.sim_state()
        assert sim["status_429"] == 0, f"the fleet caused {sim['status_429']} 429s"
        assert sim["min_tokens_left"] >= -max_deficit, f"balance fell to {sim['min_tokens_left']}"
        assert self.query("pragma integrity_check") == [("ok",)]
        lost = self.unaccounted_candidates()
        assert lost == 0, f"{lost} ASINs seen are neither a deal, a rejection nor queued"
        return sim

    def unaccounted_candidates(self) -> int:
        """ASINs ever queued that are now neither a deal, a rejection nor a candidate (0 when
        the database does not exist yet)."""
        rows = self.query(UNACCOUNTED_SQL)
        return int(rows[0][0]) if rows else 0

    def table_counts(self) -> tuple[int, int, int, int]:
        """Rows in (seen, deals, rejections, candidates): with nothing unaccounted, seen
        equals the sum of the other three exactly when no ASIN is in two of them."""
        row = self.query(
            "select (select count(*) from seen), (select count(*) from deals), "
            "(select count(*) from rejections), (select count(*) from candidates)"
        )[0]
        return int(row[0]), int(row[1]), int(row[2]), int(row[3])

    def done(self) -> int:
        """Pipeline items finished so far: deals plus rejections."""
        return self.count("deals") + self.count("rejections")

    def spent_matches(self) -> bool:
        """The simulator's consumed tokens equal the fleet's settled spend (once reconciled);
        tokens spent by 'another program' (external consumption) excluded."""
        state = self.status()
        if state is None:
            return False
        sim = self.sim_state()
        fleet_spent = int(state["tokens"]["spent"])
        return sim["tokens_consumed"] - sim.get("external_consumed", 0) == fleet_spent
