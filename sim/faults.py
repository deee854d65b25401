"""Injected faults: the next N API requests (optionally only those on one path) fail.

==============  ============================================================================
kind            what the request gets
==============  ============================================================================
``500``         HTTP 500 with the token envelope; nothing executed, nothing charged
``503``         HTTP 503 (Keepa's backend down: retry later); nothing executed or charged
``delay``       executed and charged as usual; the answer comes ``delay_s`` seconds later
``malformed``   executed and charged; HTTP 200 whose body is truncated JSON (not parseable)
``drop``        executed and charged; the connection is closed without any response
==============  ============================================================================

A fault is taken by an API request (``/token``, ``/product``, ``/deal``) that carries a valid,
paid key — requests refused before they reach an account (bad key: 400, unpaid: 402) and
admin requests never take one. Faults queue in the order they were added; a request takes the
first one whose ``path`` matches (no path: any), which counts one of its ``count`` down.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

KINDS = ("500", "503", "delay", "malformed", "drop")
DEFAULT_DELAY_S = 5.0


@dataclass(frozen=True)
class FaultHit:
    kind: str
    delay_s: float = 0.0


@dataclass
class _Pending:
    kind: str
    remaining: int
    delay_s: float
    path: str | None


def normalize_path(path: str) -> str:
    """``/product/`` and ``/product`` are the same endpoint."""
    stripped = path.rstrip("/")
    return stripped or "/"


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []

    def add(self, kind: str, count: int, *, delay_s: float = 0.0, path: str | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        if count < 1:
            raise ValueError("count must be >= 1")
        norm = normalize_path(path) if path else None
        with self._lock:
            self._pending.append(_Pending(kind, count, delay_s, norm))

    def take(self, path: str) -> FaultHit | None:
        norm = normalize_path(path)
        with self._lock:
            for i, f in enumerate(self._pending):
                if f.path is None or f.path == norm:
                    f.remaining -= 1
                    if f.remaining <= 0:
                        del self._pending[i]
                    return FaultHit(f.kind, f.delay_s)
        return None

    def clear(self) -> int:
        """Drop every pending fault; how many there were."""
        with self._lock:
            n = len(self._pending)
            self._pending.clear()
            return n

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"kind": f.kind, "remaining": f.remaining, "delay_s": f.delay_s, "path": f.path}
                for f in self._pending
            ]
