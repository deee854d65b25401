"""The one error hierarchy of keepa-fleet: everything raised on purpose derives from FleetError."""

from __future__ import annotations

from typing import Any


class FleetError(Exception):
    """Base class of every error keepa-fleet raises on purpose."""


class ConfigError(FleetError):
    """A setting is missing or has a bad value. The message names the setting."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class ProtocolError(FleetError):
    """A message could not be decoded or does not follow the protocol."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class BrokerUnavailable(FleetError):
    """No live broker: a worker makes no token-spending call (fail closed)."""


class PermitRejected(FleetError):
    """The broker answered a permit request with REJECT."""

    def __init__(self, reason: str, max_cost: int = 0) -> None:
        super().__init__(f"permit rejected: {reason}")
        self.reason = reason
        # With reason "too_large": the largest cost the account can ever grant.
        self.max_cost = max_cost


class PermitTimeout(FleetError):
    """No GRANT arrived before the requester's deadline."""


class StorageError(FleetError):
    """The SQLite database could not be opened or written."""


class StorageUnavailable(StorageError):
    """The database server stayed unreachable (or kept aborting the transaction) through the
    retries: transient, like an SQLite database locked past its busy timeout. Nothing of the
    failed write was kept; the caller gives its batch back and tries again later."""


class KeepaError(FleetError):
    """Any failure of a Keepa API call.

    ``envelope`` is the token envelope when the response carried one (429s do), else None.
    ``status`` is the HTTP status, or None when no response came back (timeout, connection).
    Messages never contain the API key.
    """

    status: int | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        envelope: Any = None,
        sent: bool = True,
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.envelope = envelope
        # False only when the request certainly never reached Keepa (nothing can have been spent).
        self.sent = sent


class KeepaRequestRejected(KeepaError):
    """HTTP 400 REQUEST_REJECTED: malformed request or malformed key."""

    status = 400


class KeepaPaymentRequired(KeepaError):
    """HTTP 402 PAYMENT_REQUIRED: the key has no access."""

    status = 402


class KeepaMethodNotAllowed(KeepaError):
    """HTTP 405 METHOD_NOT_ALLOWED: a parameter out of range."""

    status = 405


class KeepaNotEnoughTokens(KeepaError):
    """HTTP 429 NOT_ENOUGH_TOKEN: balance <= 0. Carries the envelope."""

    status = 429


class KeepaServerError(KeepaError):
    """HTTP 500 (or any other 5xx) from Keepa."""

    status = 500


class KeepaNotFound(KeepaError):
    """HTTP 404 NOT_FOUND: no such endpoint (a wrong base URL or path)."""

    status = 404


class KeepaUnavailable(KeepaServerError):
    """HTTP 503: Keepa's backend is down; retry later (handled like a 500)."""

    status = 503


class KeepaParameterError(KeepaError):
    """HTTP 200 carrying an ``error`` object: a parameter Keepa refused without failing the
    request (e.g. ``offers=10``), 0 tokens. An error, never "no products"."""


class KeepaTimeout(KeepaError):
    """No answer within the read timeout; Keepa may or may not have executed the request."""


class KeepaConnectionError(KeepaError):
    """The connection failed or was dropped."""


class KeepaBadResponse(KeepaError):
    """The body was not the JSON Keepa sends."""


class StorageBlocked(StorageError):
    """The worker's storage is failing (``common.storage_health``): no permit is asked for
    until a write succeeds again (``workers.storage_gate``). ``problem`` names it."""

    def __init__(self, problem: str, message: str) -> None:
        super().__init__(f"{problem}: {message}")
        self.problem = problem
