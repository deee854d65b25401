"""For users' own code: take part in the fleet's token budget.

Two ways, both visible in ``keepa-fleet status`` as a client with what it spent:

1. **Your own Keepa calls under a permit** (you call Keepa yourself, with your key)::

       from gateway.client import connect
       fleet = connect("notebook")                 # registers at the broker (role client)
       with fleet.permit(cost=12, priority=0) as p:
           r = requests.get("https://api.keepa.com/product", params=...)
           p.settle(r)                             # or p.settle(r.json()), the envelope

   The block waits (never a blind sleep) until the broker grants ``cost`` tokens. Leaving
   the block always settles: with what ``settle`` was given, else — on an exception — as
   the workers do (``workers.permit_client.settle_status``: the cost assumed spent unless
   the exception says the request was never sent), else ``error`` (assumed spent).

2. **The unmodified ``keepa`` package through the gateway**::

       import keepa
       from gateway.client import use_gateway
       api = use_gateway(keepa.Keepa("unused", timeout=60), client="notebook")

   keepa 1.6.0 hard-codes ``https://api.keepa.com`` in ``Keepa._request`` and calls the
   module-level ``requests.get``. ``use_gateway`` swaps the ``requests`` name seen by
   ``keepa.keepa_sync`` for a thin stand-in whose ``get`` sends the calls of *this object*
   (a thread-local set around its ``_request``) to the gateway, adding the bearer token, the
   client name and how long to wait for a permit; every other object and module is left
   alone. The package's own logic (its token bookkeeping, its 429 wait) is untouched.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from common.config import load_settings
from common.errors import BrokerUnavailable
from common.keepa import TokenEnvelope
from gateway.clients import CLIENT_HEADER
from gateway.links import ClientLink, Held
from gateway.server import WAIT_HEADER
from workers.permit_client import settle_status

log = logging.getLogger(__name__)

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8788"
KEEPA_ORIGIN = "https://api.keepa.com"
CONNECT_WAIT_S = 10.0
DEFAULT_PERMIT_WAIT_S = 600.0
# use_gateway: the permit wait asked of the gateway leaves this much of the client's own
# timeout for the Keepa call itself (offer calls take up to 20 s).
CALL_MARGIN_S = 25.0
MIN_WAIT_S = 1.0


# --- 1. the permit API ------------------------------------------------------------------


class Permit:
    """A granted permit inside ``Fleet.permit``; ``settle`` it with Keepa's answer."""

    def __init__(self, link: ClientLink, held: Held) -> None:
        self._link = link
        self._held = held

    @property
    def cost(self) -> int:
        return self._held.cost

    @property
    def permit_id(self) -> str:
        return self._held.permit

    @property
    def settled(self) -> bool:
        return self._held.settled

    def settle(self, answer: Any = None, *, http_status: int | None = None) -> None:
        """Settle with Keepa's answer: a ``requests.Response``, its JSON body (a dict with
        the token fields), a ``common.keepa.KeepaResponse``, or None (no answer: assumed
        spent). A second settle is ignored (logged)."""
        body: Any = answer
        if hasattr(answer, "status_code") and hasattr(answer, "json"):  # requests.Response
            http_status = int(answer.status_code)
            try:
                body = answer.json()
            except ValueError:
                body = None
        elif hasattr(answer, "envelope") and hasattr(answer, "payload"):  # KeepaResponse
            http_status = int(answer.status)
            body = answer.envelope.to_wire()
        envelope = TokenEnvelope.from_json(body) if isinstance(body, Mapping) else None
        wire = envelope.to_wire() if envelope is not None else None
        if wire is None:
            status = "error"  # no envelope: the outcome is unknown, the cost assumed spent
        elif http_status is None or 200 <= http_status < 300:
            status = "ok"
        else:
            status = "http_error"
        self._link.settle(self._held, status, wire, http_status)


class Fleet:
    """A user's program registered at the broker as client ``name``."""

    def __init__(self, link: ClientLink, *, priority: int = 0) -> None:
        self._link = link
        self.priority = priority

    @property
    def name(self) -> str:
        return self._link.name

    @contextlib.contextmanager
    def permit(
        self, cost: int, *, priority: int | None = None, wait_s: float = DEFAULT_PERMIT_WAIT_S
    ) -> Iterator[Permit]:
        """Wait for ``cost`` tokens; settle on the way out (see the module docstring).

        Raises PermitTimeout (no grant within ``wait_s``), PermitRejected (``too_large``:
        more than the account can ever grant) or BrokerUnavailable before the block runs;
        ConfigError for a priority above ``MAX_CLIENT_PRIORITY`` (the workers' commits
        outrank every client)."""
        from gateway.clients import check_priority

        held = self._link.acquire(
            cost,
            priority=self.priority if priority is None else check_priority(priority),
            wait_s=wait_s,
        )
        p = Permit(self._link, held)
        try:
            yield p
        except BaseException as exc:
            if not p.settled:
                status, envelope, http_status = settle_status(exc)
                self._link.settle(held, status, envelope, http_status)
            raise
        if not p.settled:
            log.warning(
                "permit %s left without settle(): settled as error (its cost assumed spent)",
                held.permit,
            )
            self._link.settle(held, "error")

    def close(self) -> None:
        self._link.close("client closed")

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    name: str,
    *,
    broker: str | None = None,
    config: str | None = None,
    priority: int = 0,
    wait_s: float = CONNECT_WAIT_S,
) -> Fleet:
    """Register at the broker (``broker.address`` of the settings unless given) as client
    ``name``; BrokerUnavailable when no broker welcomes it within ``wait_s``."""
    from gateway.clients import check_name, check_priority

    check_name(name)
    check_priority(priority)
    settings = load_settings(config, overrides={"broker.address": broker})
    b = settings.broker
    link = ClientLink(
        b.address,
        name,
        heartbeat_s=b.heartbeat_s,
        liveness=b.liveness,
        reconnect_max_s=settings.worker.reconnect_max_s,
        curve_dir=b.curve_dir,
    )
    if not link.start(wait_s):
        link.close()
        raise BrokerUnavailable(f"no broker at {b.address} welcomed client {name} in {wait_s} s")
    return Fleet(link, priority=priority)


# --- 2. the keepa package through the gateway ------------------------------------------

_route = threading.local()  # .target = (gateway url, headers) while a routed call runs
_install_lock = threading.Lock()


def _routed_get(real_get: Callable[..., Any]) -> Callable[..., Any]:
    def get(url: str, *args: Any, **kwargs: Any) -> Any:
        target = getattr(_route, "target", None)
        if target is not None and url.startswith(KEEPA_ORIGIN):
            base, extra = target
            url = base + url[len(KEEPA_ORIGIN) :]
            kwargs["headers"] = {**(kwargs.get("headers") or {}), **extra}
        return real_get(url, *args, **kwargs)

    return get


def _install(keepa_sync: Any) -> None:
    with _install_lock:
        current = keepa_sync.requests
        if getattr(current, "_keepa_fleet_routed", False):
            return
        shim = types.ModuleType("requests")
        shim.__dict__.update(current.__dict__)
        # requests.get looked up at each call, not captured: whoever else patches or wraps
        # requests later (another tool, a test) still sees the calls of unrouted objects.
        shim.get = _routed_get(lambda *a, **kw: current.get(*a, **kw))  # type: ignore[attr-defined]
        shim._keepa_fleet_routed = True  # type: ignore[attr-defined]
        keepa_sync.requests = shim


def use_gateway(
    api: Any,
    url: str = DEFAULT_GATEWAY_URL,
    *,
    token: str | None = None,
    client: str | None = None,
    wait_s: float | None = None,
) -> Any:
    """Point this ``keepa.Keepa`` object at the gateway (see the module docstring); returns
    it. ``token``: the bearer token from ``keepa-fleet gateway --add-client`` (needed on a
    non-loopback gateway); ``client``: the name shown in status (loopback without a token);
    ``wait_s``: how long the gateway may queue a call (default: the object's timeout less
    ``CALL_MARGIN_S``, at least ``MIN_WAIT_S``)."""
    import keepa.keepa_sync as keepa_sync

    if not isinstance(api, keepa_sync.Keepa):
        raise TypeError(f"use_gateway takes a keepa.Keepa object, not {type(api).__name__}")
    _install(keepa_sync)
    headers: dict[str, str] = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if client:
        headers[CLIENT_HEADER] = client
    if wait_s is None:
        wait_s = max(MIN_WAIT_S, float(getattr(api, "_timeout", 10.0)) - CALL_MARGIN_S)
    headers[WAIT_HEADER] = f"{wait_s:g}"
    target = (url.rstrip("/"), headers)
    original = api._request

    def _request(*args: Any, **kwargs: Any) -> Any:
        before = getattr(_route, "target", None)
        _route.target = target
        try:
            return original(*args, **kwargs)
        finally:
            _route.target = before

    api._request = _request  # type: ignore[method-assign]
    return api
