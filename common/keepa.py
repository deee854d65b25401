"""The Keepa HTTP client: ``/token``, ``/product`` and ``/deal`` on one ``requests.Session``.

Every call returns a ``KeepaResponse``: the JSON payload together with the token envelope
Keepa puts in every response. Every failure is a ``KeepaError`` subclass (one per HTTP status
of docs/KEEPA.md, plus timeout, connection and bad body); the 429 error carries its envelope.
Against the real API only ``base_url`` and the key differ from the simulator.

The API key travels only in the query string of the request. It is never put in a log line,
an exception message or a repr: errors name the path, never the URL.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import requests

from common.errors import (
    KeepaBadResponse,
    KeepaConnectionError,
    KeepaError,
    KeepaMethodNotAllowed,
    KeepaNotEnoughTokens,
    KeepaNotFound,
    KeepaParameterError,
    KeepaPaymentRequired,
    KeepaRequestRejected,
    KeepaServerError,
    KeepaTimeout,
    KeepaUnavailable,
)

if TYPE_CHECKING:
    from common.config import Settings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0  # offer requests take 2-20 s on Keepa
MAX_ASINS_PER_CALL = 100
USER_AGENT = "keepa-fleet/0.1"

_ERRORS_BY_STATUS: dict[int, type[KeepaError]] = {
    400: KeepaRequestRejected,
    402: KeepaPaymentRequired,
    404: KeepaNotFound,
    405: KeepaMethodNotAllowed,
    429: KeepaNotEnoughTokens,
    503: KeepaUnavailable,
}

# Keepa's names -> ours.
_WIRE_FIELDS = {
    "timestamp": "timestamp_ms",
    "tokensLeft": "tokens_left",
    "refillIn": "refill_in_ms",
    "refillRate": "refill_rate",
    "tokenFlowReduction": "token_flow_reduction",
    "tokensConsumed": "tokens_consumed",
    "processingTimeInMs": "processing_time_ms",
}
_REQUIRED = ("timestamp", "tokensLeft", "refillIn", "refillRate")


@dataclasses.dataclass(frozen=True)
class TokenEnvelope:
    """The token fields of a Keepa response."""

    timestamp_ms: int
    tokens_left: int
    refill_in_ms: int
    refill_rate: int
    token_flow_reduction: float = 0.0
    tokens_consumed: int = 0
    processing_time_ms: int = 0

    @classmethod
    def from_json(cls, body: Any) -> TokenEnvelope | None:
        """The envelope of a Keepa JSON body, or None when its token fields are missing."""
        if not isinstance(body, Mapping) or any(k not in body for k in _REQUIRED):
            return None
        try:
            return cls.from_wire(body)
        except ValueError:
            return None

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> TokenEnvelope:
        """Parse Keepa's field names (as SETTLE carries them); ValueError on bad input."""
        if not isinstance(data, Mapping):
            raise ValueError("envelope is not a map")
        values: dict[str, Any] = {}
        for wire, name in _WIRE_FIELDS.items():
            if wire not in data:
                if wire in _REQUIRED:
                    raise ValueError(f"envelope lacks {wire}")
                continue
            raw = data[wire]
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise ValueError(f"envelope field {wire} is not a number")
            if not math.isfinite(raw):
                raise ValueError(f"envelope field {wire} is not a finite number")
            if name == "token_flow_reduction":
                values[name] = float(raw)
            elif name == "tokens_consumed":
                values[name] = math.ceil(raw)  # any JSON number; a cost rounds up (safe side)
            else:
                values[name] = math.floor(raw)  # a balance (or time) rounds down
        return cls(**values)

    def to_wire(self) -> dict[str, Any]:
        """Keepa's field names: what a SETTLE message carries."""
        return {wire: getattr(self, name) for wire, name in _WIRE_FIELDS.items()}


@dataclasses.dataclass(frozen=True)
class KeepaResponse:
    status: int
    envelope: TokenEnvelope
    payload: dict[str, Any]
    elapsed_s: float

    @property
    def tokens_consumed(self) -> int:
        return self.envelope.tokens_consumed


class KeepaClient:
    """A Keepa API client. Thread-compatible, not thread-safe: one per thread."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.session = session or requests.Session()
        # requests asks for gzip by default; say so explicitly since Keepa's payloads are big.
        self.session.headers.update({"Accept-Encoding": "gzip", "User-Agent": USER_AGENT})

    @classmethod
    def from_settings(cls, settings: Settings) -> KeepaClient:
        return cls(
            settings.base_url,
            settings.api_key,
            connect_timeout_s=settings.keepa.connect_timeout_s,
            read_timeout_s=settings.keepa.read_timeout_s,
        )

    def __repr__(self) -> str:
        return f"KeepaClient(base_url={self.base_url!r})"

    def close(self) -> None:
        self.session.close()

    # --- endpoints ----------------------------------------------------------------------

    def token(self) -> KeepaResponse:
        """``GET /token``: the envelope only; costs nothing."""
        return self._get("/token", {})

    def product(
        self,
        asins: Iterable[str],
        *,
        domain: int = 1,
        stats: int | None = None,
        history: bool = True,
        offers: int | None = None,
        update: int | None = None,
        buybox: bool = False,
        rating: bool = False,
    ) -> KeepaResponse:
        """``GET /product`` for up to 100 ASINs. ``payload["products"]`` lists those found."""
        asin_list = [a.strip().upper() for a in asins]
        if not asin_list:
            raise KeepaRequestRejected("product: no ASIN given", sent=False)
        if len(asin_list) > MAX_ASINS_PER_CALL:
            raise KeepaRequestRejected(
                f"product: {len(asin_list)} ASINs, at most {MAX_ASINS_PER_CALL} a call",
                sent=False,
            )
        params: dict[str, Any] = {"domain": domain, "asin": ",".join(asin_list)}
        if stats is not None:
            params["stats"] = stats
        if not history:
            params["history"] = 0
        if offers is not None:
            params["offers"] = offers
        if update is not None:
            params["update"] = update
        if buybox:
            params["buybox"] = 1
        if rating:
            params["rating"] = 1
        return self._get("/product", params)

    def deal(self, selection: Mapping[str, Any]) -> KeepaResponse:
        """``GET /deal`` with a selection. ``payload["deals"]["dr"]`` lists the deals."""
        return self._get("/deal", {"selection": json.dumps(dict(selection), separators=(",", ":"))})

    # --- transport ----------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, Any]) -> KeepaResponse:
        query = {"key": self._key, **params}
        started = time.monotonic()
        try:
            resp = self.session.get(self.base_url + path, params=query, timeout=self.timeout)
        except requests.exceptions.ConnectTimeout:
            # No connection was made: the request cannot have reached Keepa.
            raise KeepaConnectionError(f"{path}: connect timed out", sent=False) from None
        except requests.exceptions.Timeout:
            raise KeepaTimeout(f"{path}: no answer within {self.timeout[1]} s") from None
        except requests.exceptions.ConnectionError as exc:
            # Refused before sending => not sent; a reset mid-request may have been executed.
            sent = not _refused(exc)
            raise KeepaConnectionError(
                f"{path}: connection failed ({_reason(exc)})", sent=sent
            ) from None
        except requests.exceptions.RequestException as exc:
            raise KeepaConnectionError(f"{path}: request failed ({type(exc).__name__})") from None
        elapsed = time.monotonic() - started
        try:
            body = resp.json()
        except ValueError:
            body = None
        envelope = TokenEnvelope.from_json(body)
        status = resp.status_code
        if status >= 400:
            cls = _ERRORS_BY_STATUS.get(status, KeepaServerError if status >= 500 else KeepaError)
            detail = ""
            if isinstance(body, Mapping) and body.get("error"):
                detail = f": {str(body['error'])[:200]}"
            raise cls(f"{path}: HTTP {status}{detail}", status=status, envelope=envelope)
        if not isinstance(body, dict) or envelope is None:
            raise KeepaBadResponse(
                f"{path}: HTTP {status} with a body that is not Keepa JSON",
                status=status,
                envelope=envelope,
            )
        if body.get("error"):
            # Keepa refuses some parameters with a 200 and an error object (offers=1..19):
            # never read that as "no products".
            raise KeepaParameterError(
                f"{path}: HTTP {status} with an error: {str(body['error'])[:200]}",
                status=status,
                envelope=envelope,
            )
        log.debug(
            "%s -> %d, consumed %d, left %d",
            path,
            status,
            envelope.tokens_consumed,
            envelope.tokens_left,
        )
        return KeepaResponse(status=status, envelope=envelope, payload=body, elapsed_s=elapsed)


def _refused(exc: BaseException) -> bool:
    """True when the connection was refused or never established (nothing was sent)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ConnectionRefusedError):
            return True
        name = type(cur).__name__
        if name in ("NewConnectionError", "NameResolutionError"):
            return True
        args = getattr(cur, "args", ())
        nxt = None
        for a in args:
            if isinstance(a, BaseException):
                nxt = a
                break
        cur = getattr(cur, "reason", None) or nxt or cur.__cause__ or cur.__context__
    return False


def _reason(exc: BaseException) -> str:
    """A short reason without the URL (which holds the key)."""
    if _refused(exc):
        return "refused"
    text = str(exc)
    if "RemoteDisconnected" in text or "Connection aborted" in text:
        return "closed by the server without a response"
    if "reset" in text.lower():
        return "reset by peer"
    return type(exc).__name__
