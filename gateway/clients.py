"""Who may use the gateway: named clients with a bearer token and a priority.

The store is one JSON file (``var/gateway-clients.json`` by default, mode 0600)::

    {"clients": {"notebook": {"token_sha256": "<hex>", "priority": 0, "created": "..."}}}

Only the SHA-256 of each token is kept: a token is 32 random bytes (``secrets``), so a plain
hash is as good as a slow one and checking it costs nothing. ``add_client`` prints the token
once; lose it and add the client again (the new token replaces the old).

Rules (``authenticate``):

- a peer on a loopback address may come without a token; it is then the client named by its
  ``X-Keepa-Fleet-Client`` header (default ``local``), priority ``DEFAULT_PRIORITY``; a name
  that belongs to a registered client needs that client's token;
- any other peer needs ``Authorization: Bearer <token>`` of a registered client;
- a token that is given must be valid, whoever sends it.

Client priorities stay below the workers' commits (``MAX_CLIENT_PRIORITY`` <
``workers.stages.PRIORITY_COMMIT``): the peek's tokens are already spent when a commit asks.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

from common.errors import ConfigError

DEFAULT_NAME = "local"
DEFAULT_PRIORITY = 0
MIN_CLIENT_PRIORITY = -1000
MAX_CLIENT_PRIORITY = 2  # below workers.stages.PRIORITY_COMMIT (3); tested
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
CLIENT_HEADER = "X-Keepa-Fleet-Client"
TOKEN_BYTES = 32


@dataclasses.dataclass(frozen=True)
class Client:
    name: str
    priority: int
    registered: bool  # False: an unregistered loopback caller


class Unauthorized(Exception):
    """The request may not use the gateway (HTTP 401, the message says why)."""


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ConfigError("client name", f"{name[:40]!r}: 1-32 of A-Z a-z 0-9 _ . -")
    return name


def check_priority(priority: int) -> int:
    if not MIN_CLIENT_PRIORITY <= priority <= MAX_CLIENT_PRIORITY:
        raise ConfigError(
            "--priority",
            f"{priority}: a client's priority is {MIN_CLIENT_PRIORITY}..{MAX_CLIENT_PRIORITY} "
            "(the workers' commits outrank every client)",
        )
    return priority


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ClientStore:
    """The registered clients, read from ``path`` (re-read when the file changes)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._mtime: float | None = None
        self._clients: dict[str, dict[str, Any]] = {}
        self.reload()

    def reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._clients, self._mtime = {}, None
            return
        if mtime == self._mtime:
            return
        try:
            data = json.loads(self.path.read_text())
            clients = data["clients"]
            if not isinstance(clients, dict):
                raise TypeError("clients is not a map")
            for name, entry in clients.items():
                check_name(name)
                if not isinstance(entry.get("token_sha256"), str):
                    raise TypeError(f"client {name}: no token_sha256")
                check_priority(int(entry.get("priority", DEFAULT_PRIORITY)))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ConfigError) as exc:
            raise ConfigError("gateway clients file", f"{self.path}: {exc}") from None
        self._clients, self._mtime = clients, mtime

    @property
    def names(self) -> list[str]:
        return sorted(self._clients)

    def add(self, name: str, priority: int = DEFAULT_PRIORITY) -> str:
        """Register ``name`` (replacing its token if it exists); returns the new token."""
        check_name(name)
        check_priority(priority)
        if name == DEFAULT_NAME:
            raise ConfigError("client name", f"{DEFAULT_NAME!r} is the unregistered default")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self.reload()
        clients = dict(self._clients)
        clients[name] = {
            "token_sha256": _hash(token),
            "priority": priority,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"clients": clients}, f, indent=2, sort_keys=True)
        os.replace(tmp, self.path)
        self._mtime = None
        self.reload()
        return token

    def authenticate(self, peer_host: str, authorization: str, client_header: str) -> Client:
        """Who this request is (see the module docstring); Unauthorized otherwise."""
        self.reload()
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("Authorization must be 'Bearer <token>'")
            digest = _hash(token.strip())
            for name, entry in self._clients.items():
                if hmac.compare_digest(digest, entry["token_sha256"]):
                    return Client(name, int(entry.get("priority", DEFAULT_PRIORITY)), True)
            raise Unauthorized("unknown token")
        if not is_loopback(peer_host):
            raise Unauthorized(
                "a bearer token is required from a non-loopback address "
                "(keepa-fleet gateway --add-client NAME prints one)"
            )
        name = client_header.strip() or DEFAULT_NAME
        if not NAME_RE.match(name):
            raise Unauthorized(f"{CLIENT_HEADER} must be 1-32 of A-Z a-z 0-9 _ . -")
        if name in self._clients:
            raise Unauthorized(f"client {name!r} is registered: send its bearer token")
        return Client(name, DEFAULT_PRIORITY, False)
