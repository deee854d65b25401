"""Workers on two hosts sharing one broker and one PostgreSQL database.

Two network namespaces stand for the two machines (``two_host.netns``): host A runs the
simulated Keepa API (``two_host.sim_two_host``: the simulator plus per-ASIN counters and the
relay host B reaches it through), the broker (CURVE, on a non-loopback address) and
PostgreSQL, plus one worker; host B runs workers under its own supervisord with the
top-level ``supervisord-workers.conf`` (and a UTS namespace: another host name, so the broker
treats them as remote and can only send them KILL messages). Checked:

1. deals land once: no ASIN peeked or committed twice while both hosts work (the simulator's
   per-ASIN counters), and both hosts peeked;
2. a worker on B SIGKILLed while holding claims: its claims come back (taken again or
   finished) and B's supervisord starts it again;
3. a stalled worker on B (the test-only hang fault) is killed by a KILL message (the broker's
   kill record says ``kill_message``; the worker exits 75) and B's supervisord restarts it;
4. B's lan link (broker and database) cut with ``ip link set ... down``: B's workers drop out
   of the broker's registry and nothing at all reaches Keepa from B (the relay's byte count
   stands still), while B could still reach Keepa; the link back, B's workers return and
   spend again;
5. afterwards: no 429, every ASIN seen accounted for, the database consistent.

Needs root (namespaces) and the PostgreSQL server binaries; skips with the reason elsewhere.
The run's figures (deals, spend per host, kill timings) are printed on one line starting
``two-host figures:`` (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import zmq
from fleet import FAST_ENV, UNACCOUNTED_SQL
from pg_support import NO_SERVER, PgCluster, pg_binaries
from support import Processes, fleet_command, wait_until
from two_host.netns import NetnsUnavailable, TwoHosts, entered, why_unavailable

from common import protocol
from common.config import SIM_DEMO_KEY
from common.curve import CLIENT_NAME, setup_client

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
KEEPA_FLEET = str(Path(sys.executable).parent / "keepa-fleet")
SUPERVISORD = str(Path(sys.executable).parent / "supervisord")
SUPERVISORCTL = str(Path(sys.executable).parent / "supervisorctl")
BROKER_PORT, PG_PORT, SIM_PORT, RELAY_PORT = 5555, 5432, 8101, 8102
BOUND_S = 30  # any one condition below
STALL_S = 4
CLAIM_TTL_S = 6
QUIET_WINDOW_S = 3.0
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def stamp_of(line: str) -> float:
    m = STAMP.match(line)
    assert m, line
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def lines_with(path: Path, text: str) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text(errors="replace").splitlines() if text in line]


class HostA:
    """What the test (in the machine's own namespace) asks host A: the broker's status and
    the simulator's counters, over sockets made inside A's namespace."""

    def __init__(self, hosts: TwoHosts, curve_dir: Path) -> None:
        self.ns = hosts.ns_a
        self.curve_dir = str(curve_dir)
        self.broker = f"tcp://{hosts.lan_a}:{BROKER_PORT}"
        with entered(self.ns):  # the context's I/O thread, which connects, lives in A
            self.ctx: zmq.Context[Any] = zmq.Context()
            self.ctx.socket(zmq.DEALER).close()
            self.http = requests.Session()

    def status(self, timeout: float = 2.0) -> dict[str, Any] | None:
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        try:
            setup_client(sock, self.curve_dir)
            sock.connect(self.broker)
            sock.send(protocol.Status().encode())
            if not sock.poll(int(timeout * 1000), zmq.POLLIN):
                return None
            reply = protocol.decode(sock.recv_multipart()[-1], max_bytes=protocol.MAX_REPLY_BYTES)
            return reply.state if isinstance(reply, protocol.StatusReply) else None
        finally:
            sock.close()

    def sim(self, what: str = "state") -> dict[str, Any]:
        with entered(self.ns):
            resp = self.http.get(
                f"http://127.0.0.1:{SIM_PORT}/_sim/{what}", params={"key": SIM_DEMO_KEY}, timeout=5
            )
        resp.raise_for_status()
        return dict(resp.json())

    def close(self) -> None:
        self.http.close()
        self.ctx.destroy(linger=0)


@pytest.fixture
def hosts() -> Iterator[TwoHosts]:
    reason = why_unavailable() or (NO_SERVER if pg_binaries() is None else None)
    if reason:
        pytest.skip(reason)
    h = TwoHosts()
    try:
        try:
            h.create()
        except NetnsUnavailable as exc:
            pytest.skip(f"cannot make network namespaces here: {exc}")
        yield h
    finally:
        h.remove()
        assert not h.exists(), "the test's namespaces are still there"


def test_two_hosts_share_the_fleet(hosts: TwoHosts, tmp_path: Path) -> None:
    figures: dict[str, Any] = {}
    started = time.monotonic()
    procs = Processes(tmp_path)
    cluster = PgCluster(
        host=hosts.lan_a,
        port=PG_PORT,
        prefix=TwoHosts.prefix(hosts.ns_a),
        hba_networks=[f"{hosts.net}.0/29"],
    )
    probe: HostA | None = None
    var_b = tmp_path / "hostb"
    try:
        # --- host A: PostgreSQL, keys, simulator, broker, one worker ----------------------
        cluster.start()
        local = f"postgresql://postgres@/{{}}?host={cluster.root}&port={PG_PORT}"  # its socket
        with psycopg.connect(local.format("postgres"), autocommit=True) as admin:
            admin.execute("CREATE DATABASE fleet")
        db_local = local.format("fleet")
        db_url = f"postgresql://postgres@{hosts.lan_a}:{PG_PORT}/fleet"

        keys = tmp_path / "keys"
        made = subprocess.run(
            fleet_command("keys", "--dir", str(keys), "--client", "hosta", "--client", "hostb"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
        keys_b = tmp_path / "keys_b"  # what host B is given: the broker's public key, its pair
        keys_b.mkdir()
        shutil.copyfile(keys / "broker.key", keys_b / "broker.key")
        shutil.copyfile(keys / "clients" / "hostb.key_secret", keys_b / f"{CLIENT_NAME}.key_secret")

        common = {
            **FAST_ENV,
            "FLEET_CONFIG": "",
            "FLEET_LOG_LEVEL": "INFO",
            "FLEET_BROKER_STALL_S": str(STALL_S),
            "FLEET_WORKER_CLAIM_TTL_S": str(CLAIM_TTL_S),
            "KEEPA_REFILL_PERIOD_S": "0.5",
            "FLEET_BROKER": f"tcp://{hosts.lan_a}:{BROKER_PORT}",
            "FLEET_DB": db_url,
        }
        on_a = {
            **common,
            "KEEPA_BASE_URL": f"http://127.0.0.1:{SIM_PORT}",
            "FLEET_BROKER_CURVE_DIR": str(keys),
        }
        in_a = TwoHosts.prefix(hosts.ns_a)
        procs.start(
            "sim",
            [
                *in_a,
                sys.executable,
                "-m",
                "two_host.sim_two_host",
                "--port",
                str(SIM_PORT),
                "--relay",
                f"{hosts.wan_a}:{RELAY_PORT}",
                "--refill-rate",
                "300",
                "--refill-period",
                "0.5",
                # Calls with offers take 0.2-2 s (a tenth of Keepa's): claims are held a while.
                "--latency-scale",
                "0.1",
            ],
            env={"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"},
        )
        probe = HostA(hosts, keys)
        wait_until(
            lambda: _answers(probe),
            BOUND_S,
            interval=0.1,
            message=lambda: f"the simulator on A; log:\n{procs.log('sim')}",
        )
        procs.start("broker", [*in_a, *fleet_command("broker")], env=on_a)
        wait_until(
            lambda: probe.status(timeout=1) is not None,
            BOUND_S,
            interval=0.1,
            message=lambda: f"the CURVE broker on A; log:\n{procs.log('broker')}",
        )
        procs.start(
            "hosta_worker", [*in_a, *fleet_command("worker", "--id", "hosta_worker_00")], env=on_a
        )

        # --- host B: its own supervisord, two workers and a stalling one ------------------
        host_b = f"hostb-{hosts.ns_b[2:-1]}"
        (var_b / "log").mkdir(parents=True)
        (var_b / "supervisord.d").mkdir()
        (var_b / "supervisord.d" / "stall.conf").write_text(
            "[program:stall]\n"
            "command = %(ENV_KEEPA_FLEET)s worker --broker %(ENV_FLEET_BROKER)s "
            "--id %(host_node_name)s_stall\n"
            'environment = FLEET_WORKER_FAULT="hang_after:3"\n'
            "autorestart = true\nstartsecs = 1\nstartretries = 100\nstopsignal = KILL\n"
            "redirect_stderr = true\nstdout_logfile = %(ENV_FLEET_VAR)s/log/stall.log\n"
        )
        env_b = {
            **common,
            "KEEPA_BASE_URL": f"http://{hosts.wan_a}:{RELAY_PORT}",
            "FLEET_BROKER_CURVE_DIR": str(keys_b),
            "FLEET_VAR": str(var_b),
            "FLEET_WORKERS": "2",
            "KEEPA_FLEET": KEEPA_FLEET,
        }
        conf = str(ROOT / "supervisord-workers.conf")
        procs.start("supervisord_b", hosts.on_b(host_b, [SUPERVISORD, "-n", "-c", conf]), env=env_b)

        def ctl(*args: str) -> str:
            out = subprocess.run(
                [SUPERVISORCTL, "-c", conf, *args],
                capture_output=True,
                text=True,
                timeout=30,
                env={**os.environ, **env_b},
            )
            return out.stdout

        def alive(host: str) -> set[str]:
            state = probe.status() if probe else None
            return {
                w["id"]
                for w in (state or {}).get("workers", [])
                if w["host"] == host and w["state"] in ("alive", "waiting")
            }

        b_workers = {f"{host_b}_worker_00", f"{host_b}_worker_01"}
        wait_until(
            lambda: b_workers <= alive(host_b),
            BOUND_S * 2,
            interval=0.2,
            message=lambda: f"B's workers registered; supervisord:\n{ctl('status')}",
        )
        figures["started_s"] = round(time.monotonic() - started, 1)

        # --- 1. both hosts peek, none twice ------------------------------------------------
        def peeked_by_both() -> dict[str, Any] | None:
            c = probe.sim("two_host") if probe else {}
            a_only = set(c["peeks"]) - set(c["b_peeked"])
            enough = len(c["b_peeked"]) >= 20 and len(a_only) >= 20 and len(c["commits"]) >= 5
            return c if enough else None

        counts = wait_until(peeked_by_both, BOUND_S, interval=0.2, message="both hosts peeking")
        twice = {a: n for a, n in counts["peeks"].items() if n > 1}
        assert not twice, f"ASINs peeked twice: {twice}"
        committed_twice = {a: n for a, n in counts["commits"].items() if n > 1}
        assert not committed_twice, f"ASINs committed twice: {committed_twice}"
        figures["before_faults"] = {
            "peeked": len(counts["peeks"]),
            "peeked_by_b": len(counts["b_peeked"]),
            "committed": len(counts["commits"]),
            "max_peeks_per_asin": max(counts["peeks"].values()),
        }

        # --- 2. a worker on B SIGKILLed while holding claims ------------------------------
        def claims_on_b() -> list[tuple[str, str, float]]:
            with psycopg.connect(db_local) as conn:
                rows = conn.execute(
                    "SELECT claim_owner, asin, claim_expires FROM candidates WHERE claim_owner "
                    "LIKE %s AND claim_expires > %s ORDER BY claim_owner",
                    (f"{host_b}_%", time.time()),
                ).fetchall()
            return [(str(o), str(a), float(e)) for o, a, e in rows]

        def pid_gone(pid: int) -> bool:
            return not Path(f"/proc/{pid}").exists() or _zombie(pid)

        def restarted(name: str, old_pid: int) -> bool:
            pid = _pid(ctl("pid", f"worker:{name}"))
            return pid not in (0, old_pid) and "RUNNING" in ctl("status", f"worker:{name}")

        # SIGKILL a B worker while it holds claims: it is frozen (SIGSTOP) first, so what
        # the database shows as its claims is exactly what it dies with (not yet, SIGCONT
        # and look again). The test plays host B's OOM killer: a signal on B itself.
        standing: set[tuple[str, float]] = set()
        attempts = 0
        deadline = time.monotonic() + BOUND_S
        while not standing:
            assert time.monotonic() < deadline, "no B worker caught holding claims"
            name = f"worker_{attempts % 2:02d}"
            owner = f"{host_b}_{name}"
            attempts += 1
            old_pid = _pid(ctl("pid", f"worker:{name}"))
            os.kill(old_pid, signal.SIGSTOP)
            standing = {(a, e) for o, a, e in claims_on_b() if o == owner}
            if not standing:
                os.kill(old_pid, signal.SIGCONT)
                time.sleep(min(0.05 * attempts, 0.3))  # looks spread over a batch
                continue
            os.kill(old_pid, signal.SIGKILL)
            t_kill = time.monotonic()
        wait_until(lambda: pid_gone(old_pid), BOUND_S, interval=0.02, message=f"{name} dead")
        wait_until(
            lambda: restarted(name, old_pid),
            BOUND_S,
            interval=0.2,
            message=f"{name} started again",
        )

        def claims_back() -> bool:
            with psycopg.connect(db_local) as conn:
                rows = conn.execute(
                    "SELECT asin, claim_owner, claim_expires FROM candidates WHERE asin = ANY(%s)",
                    ([a for a, _ in standing],),
                ).fetchall()
            still = {(a, e) for a, o, e in rows if o == owner and e is not None} & standing
            return not still  # each one expired and claimed anew, or finished since

        wait_until(claims_back, CLAIM_TTL_S + BOUND_S, interval=0.1, message="the claims back")
        figures["sigkill"] = {
            "attempts": attempts,
            "claims_left_by_the_dead": len(standing),
            "claims_back_s": round(time.monotonic() - t_kill, 1),
            "claim_ttl_s": CLAIM_TTL_S,
            "restarted_by_supervisord": True,
        }

        # --- 3. the stalled worker on B: KILL message, exit 75, restarted -----------------
        stall_id = f"{host_b}_stall"
        stall_log = var_b / "log" / "stall.log"
        supervisord_log = var_b / "log" / "supervisord.log"

        def stall_cycle() -> bool:
            exits = lines_with(supervisord_log, "exited: stall (exit status 75")
            spawns = lines_with(supervisord_log, "spawned: 'stall'")
            return bool(exits) and len(spawns) >= 2

        wait_until(
            stall_cycle,
            BOUND_S * 2,
            interval=0.2,
            message=lambda: f"the stall cycle; its log:\n{stall_log.read_text()[-3000:]}",
        )
        kills = [k for k in (probe.status() or {}).get("kills", []) if k["worker"] == stall_id]
        assert kills and kills[0]["action"] == "kill_message", kills
        assert all(k["host"] == host_b for k in kills)
        hang = stamp_of(lines_with(stall_log, "the work loop hangs now")[0])
        got_kill = stamp_of(lines_with(stall_log, "KILL from the broker")[0])
        exited = stamp_of(lines_with(supervisord_log, "exited: stall (exit status 75")[0])
        respawn = next(
            stamp_of(s)
            for s in lines_with(supervisord_log, "spawned: 'stall'")
            if stamp_of(s) >= exited
        )
        figures["stall"] = {
            "hang_to_kill_message_s": round(got_kill - hang, 2),
            "kill_message_to_exit_s": round(exited - got_kill, 2),
            "exit_to_restart_s": round(respawn - exited, 2),
            "stall_s_setting": STALL_S,
        }

        # --- 4. B's lan link cut: nothing reaches Keepa from B ----------------------------
        before = probe.sim("two_host")
        hosts.set_lan_on_b(False)
        cut_off = {a for _, a, _ in claims_on_b()}  # B's claims now: they come back by expiry
        t_cut = time.monotonic()
        wait_until(
            lambda: not alive(host_b), BOUND_S, interval=0.2, message="B out of the registry"
        )
        figures["cut_noticed_s"] = round(time.monotonic() - t_cut, 1)
        frozen = probe.sim("two_host")
        end = time.monotonic() + QUIET_WINDOW_S  # an observation window, not a wait
        while time.monotonic() < end:
            now = probe.sim("two_host")
            moved = (now["b_requests"] - frozen["b_requests"], now["b_bytes"] - frozen["b_bytes"])
            assert moved == (0, 0), "host B reached Keepa while it could not reach the broker"
            time.sleep(0.2)
        figures["b_requests_during_cut"] = now["b_requests"] - frozen["b_requests"]
        figures["b_requests_before_cut"] = before["b_requests"]
        with entered(hosts.ns_b):  # B could reach Keepa all along: the broker held it back
            socket.create_connection((hosts.wan_a, RELAY_PORT), timeout=5).close()
            with pytest.raises(OSError):
                socket.create_connection((hosts.lan_a, BROKER_PORT), timeout=1).close()
        hosts.set_lan_on_b(True)
        t_up = time.monotonic()
        wait_until(
            lambda: b_workers <= alive(host_b),
            BOUND_S * 2,
            interval=0.2,
            message="B's workers back",
        )
        wait_until(
            lambda: probe.sim("two_host")["b_requests"] > frozen["b_requests"],
            BOUND_S,
            interval=0.2,
            message="B spending again",
        )
        figures["reconnected_and_spending_s"] = round(time.monotonic() - t_up, 1)

        # --- 5. what must hold after it all ------------------------------------------------
        sim = probe.sim("state")
        assert sim["status_429"] == 0, f"the fleet caused {sim['status_429']} 429s"
        state = probe.status() or {}
        with psycopg.connect(db_local) as conn:
            unaccounted = conn.execute(UNACCOUNTED_SQL).fetchone()
            deals = conn.execute("SELECT count(*) FROM deals").fetchone()
            both = conn.execute(
                "SELECT count(*) FROM candidates c JOIN deals d USING (domain, asin)"
            ).fetchone()
        assert unaccounted == (0,) and both == (0,)
        final = probe.sim("two_host")
        spent: dict[str, int] = {}
        for w in state.get("workers", []):
            who = "B" if w["host"] == host_b else "A"
            spent[who] = spent.get(who, 0) + int(w["tokens_spent"])
        # Deals land once over the whole run: an ASIN peeked twice is one whose claim came
        # back from a dead worker or from host B cut off (claims_on_b covers B's workers).
        again = {a for a, n in final["peeks"].items() if n > 1}
        excused = {a for a, _ in standing} | cut_off
        assert again <= excused, f"peeked twice without a claim coming back: {again - excused}"
        figures.update(
            deals=deals[0] if deals else 0,
            tokens_consumed_sim=sim["tokens_consumed"],
            tokens_spent_broker=state.get("tokens", {}).get("spent"),
            tokens_unaccounted_broker=state.get("tokens", {}).get("unaccounted"),
            spent_by_host=spent,
            asins_peeked=len(final["peeks"]),
            asins_peeked_more_than_once=sum(1 for n in final["peeks"].values() if n > 1),
            run_s=round(time.monotonic() - started, 1),
        )
        print("two-host figures:", json.dumps(figures, sort_keys=True))
    finally:
        if probe is not None:
            probe.close()
        procs.stop_all(grace=10)
        cluster.stop()


def _answers(probe: HostA) -> bool:
    try:
        return "tokens_left" in probe.sim("state")
    except requests.RequestException:
        return False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except (OSError, IndexError):
        return True


def _pid(text: str) -> int:
    text = text.strip()
    return int(text) if text.isdigit() else 0
