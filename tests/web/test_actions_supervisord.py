"""The dashboard's actions carried out by a real supervisord (its XML-RPC on a unix socket)
on a stand-in worker program (``sleep``): restart and kill give a new pid, drain stops it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from support import Processes, wait_until

from web.actions import Actions, SupervisordRpc
from web.app import WebConfig

TOKEN = "a-token-of-twenty-chars"
CONF = """\
[unix_http_server]
file = {var}/supervisor.sock
[supervisord]
logfile = {var}/supervisord.log
pidfile = {var}/supervisord.pid
nodaemon = true
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[program:worker]
command = {sleep} 300
process_name = %(program_name)s_%(process_num)02d
numprocs = 1
autorestart = true
startsecs = 0
"""


def test_actions_reach_supervisord(
    tmp_path: Path, processes: Processes, deals_db: Path, server: Any
) -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None
    conf = tmp_path / "supervisord.conf"
    conf.write_text(CONF.format(var=tmp_path, sleep=sleep))
    supervisord = str(Path(sys.executable).parent / "supervisord")
    processes.start("supervisord", [supervisord, "-n", "-c", str(conf)])
    rpc = SupervisordRpc(tmp_path / "supervisor.sock")

    def info() -> dict[str, Any]:
        return dict(rpc._proxy().getProcessInfo("worker:worker_00"))

    wait_until(lambda: info()["statename"] == "RUNNING", 20, interval=0.1, message="running")
    assert rpc.names() == ["worker_00"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    config = WebConfig(db=deals_db, actions=Actions(token=TOKEN, supervisor=rpc))
    with server(config) as live:
        pid = info()["pid"]
        r = live.post("/api/actions/restart", json={"worker": "worker_00"}, headers=auth)
        assert r.status_code == 200, r.text
        wait_until(
            lambda: info()["statename"] == "RUNNING" and info()["pid"] != pid, 20, interval=0.1
        )
        pid = info()["pid"]
        assert live.post("/api/actions/kill", json={"worker": "worker_00"}, headers=auth).ok
        wait_until(
            lambda: info()["statename"] == "RUNNING" and info()["pid"] not in (0, pid),
            20,
            interval=0.1,
            message="killed and started again by autorestart",
        )
        assert live.post("/api/actions/drain", json={"worker": "worker_00"}, headers=auth).ok
        assert info()["statename"] == "STOPPED"
        # A wrong token changes nothing.
        r = live.post("/api/actions/restart", json={"worker": "worker_00"})
        assert r.status_code == 401 and info()["statename"] == "STOPPED"
