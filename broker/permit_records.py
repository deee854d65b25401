"""The permit book's records: a request or permit (``Permit``) and an answer to send
(``Decision``). Kept apart from the book (``broker/permits.py``) that moves them."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Permit:
    permit: str
    worker: str
    seq: int
    cost: int
    priority: int
    state: str
    requested_at: float
    deadline_at: float
    granted_at: float | None
    lease_until: float | None
    settled_at: float | None
    reason: str = ""
    arrival: int = 0  # tie-break of the queue order
    finished_at: float | None = None


@dataclasses.dataclass(frozen=True)
class Decision:
    kind: str  # "grant" | "reject"
    worker: str
    seq: int
    permit: str
    cost: int
    lease_ttl_s: float
    reason: str = ""
    max_cost: int = 0
