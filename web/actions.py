"""Kill, drain and restart a worker from the dashboard: off unless ``--allow-actions`` is
given together with a token (``FLEET_WEB_TOKEN``), and then only for a request that carries
that token (``Authorization: Bearer TOKEN``).

The actions go to supervisord (its XML-RPC interface on ``$FLEET_VAR/supervisor.sock``), the
process manager that owns the workers; the broker's wire protocol is not involved:

==========  ===================================================================
action      what supervisord does to ``worker:<name>``
==========  ===================================================================
``drain``   stop it with SIGTERM (the worker finishes its call in hand, says BYE)
``restart`` stop it the same way, then start it again
``kill``    send it SIGKILL (supervisord's autorestart brings it back)
==========  ===================================================================
"""

from __future__ import annotations

import hmac
import re
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

ACTIONS = ("drain", "restart", "kill")
WORKER_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
GROUP = "worker"
MIN_TOKEN_CHARS = 16


class ActionError(Exception):
    """An action refused or failed; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Supervisor(Protocol):
    def names(self) -> list[str]: ...
    def stop(self, name: str) -> None: ...
    def start(self, name: str) -> None: ...
    def signal(self, name: str, sig: str) -> None: ...


class SupervisordRpc:
    """supervisord's XML-RPC over its unix socket (one short connection a call)."""

    def __init__(self, socket_path: str | Path) -> None:
        self.socket_path = str(socket_path)

    def _proxy(self) -> Any:
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.socket_path}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def names(self) -> list[str]:
        return [
            str(p["name"]) for p in self._proxy().getAllProcessInfo() if p.get("group") == GROUP
        ]

    def stop(self, name: str) -> None:
        self._proxy().stopProcess(f"{GROUP}:{name}", True)

    def start(self, name: str) -> None:
        self._proxy().startProcess(f"{GROUP}:{name}", True)

    def signal(self, name: str, sig: str) -> None:
        self._proxy().signalProcess(f"{GROUP}:{name}", sig)


@dataclass
class Actions:
    """The gate and the dispatch. ``token`` empty means actions are off."""

    token: str = ""
    supervisor: Supervisor | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.token) and self.supervisor is not None

    def check_token(self, authorization: str | None) -> None:
        if not self.enabled:
            raise ActionError(
                403,
                "actions are off: start the dashboard with --allow-actions and FLEET_WEB_TOKEN",
            )
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            raise ActionError(401, "a valid token is needed: Authorization: Bearer TOKEN")

    def run(self, action: str, worker: str, authorization: str | None) -> str:
        self.check_token(authorization)
        supervisor = self.supervisor
        if supervisor is None:  # (enabled says it is set)
            raise ActionError(403, "actions are off: no supervisord to act through")
        if action not in ACTIONS:
            raise ActionError(404, f"no action {action!r}; actions: {', '.join(ACTIONS)}")
        if not WORKER_NAME.match(worker or ""):
            raise ActionError(400, "worker must be a worker's name, e.g. worker_01")
        try:
            if worker not in supervisor.names():
                raise ActionError(404, f"supervisord runs no worker {worker!r}")
            if action == "kill":
                supervisor.signal(worker, "KILL")
            else:
                supervisor.stop(worker)
                if action == "restart":
                    supervisor.start(worker)
        except ActionError:
            raise
        except (OSError, xmlrpc.client.Error) as exc:
            raise ActionError(502, f"supervisord did not carry out {action}: {exc}") from None
        return f"{action} {worker}: done"


def check_token_setting(token: str) -> str | None:
    """Why ``token`` cannot guard the actions, or None when it can."""
    if len(token) < MIN_TOKEN_CHARS:
        return f"must be at least {MIN_TOKEN_CHARS} characters"
    if not token.isprintable() or " " in token:
        return "must be printable characters without spaces"
    return None
