"""The fleet's health as the broker sees it: the Keepa key's state (``broker.keepa_state``)
and each worker's storage (the ``storage`` field of its heartbeats).

``problems(now)`` is the list status opens with (``keepa-fleet status``: the health line;
``--check`` exits 1 while it is not empty; the metrics' ``keepa_fleet_problem`` gauges).
Every problem is logged once when it begins and once when it ends (``common.say_once``),
never once per retry.

The broker's loop calls ``on_token``/``on_call`` with each ``/token`` answer and settle;
both return the reason the permit book must reject requests with (empty: open). Pure apart
from logging: ``now`` is passed in.
"""

from __future__ import annotations

import logging
from typing import Any

from broker.keepa_state import RECHECK_MAX_S, KeepaState
from common.say_once import SayOnce
from common.storage_health import describe

log = logging.getLogger(__name__)

STORAGE_STALE_S = 30.0  # a storage report older than this (a silent worker) is dropped
MAX_STORAGE_ENTRIES = 10_000
STORAGE_DOES = "that worker asks for no permit; it keeps what it paid for and retries writing"


class FleetHealth:
    def __init__(self, *, recheck_max_s: float = RECHECK_MAX_S) -> None:
        self.keepa = KeepaState(recheck_max_s=recheck_max_s)
        self._keepa_say = SayOnce(log, "Keepa")
        self._storage: dict[str, tuple[dict[str, Any], float]] = {}
        self._storage_say: dict[str, SayOnce] = {}

    # --- Keepa --------------------------------------------------------------------------

    def on_token(
        self, now: float, http_status: int | None, error: str, refill_rate: int | None = None
    ) -> str:
        self.keepa.on_token(now, http_status, error, refill_rate)
        return self._after_keepa(now)

    def on_call(
        self, now: float, http_status: int | None, status: str, refill_rate: int | None = None
    ) -> str:
        self.keepa.on_call(now, http_status, status, refill_rate)
        return self._after_keepa(now)

    @property
    def keepa_problem(self) -> bool:
        return not self.keepa.ok

    def recheck_due(self, now: float) -> bool:
        return self.keepa.recheck_due(now)

    def next_recheck_at(self) -> float | None:
        return self.keepa.next_recheck_at()

    def _after_keepa(self, now: float) -> str:
        if self.keepa.ok:
            self._keepa_say.ok(now, "permits are granted again")
        else:
            problem = self.keepa.problem(now) or {}
            self._keepa_say.failing(
                now, self.keepa.state, f"{problem.get('says')}; {problem.get('does')}"
            )
        return self.keepa.reject_reason

    # --- storage ------------------------------------------------------------------------

    def worker_storage(self, worker_id: str, storage: dict[str, Any], now: float) -> None:
        """A worker's heartbeat: its storage report (empty: writes succeed)."""
        problem = storage.get("problem") if isinstance(storage, dict) else None
        say = self._storage_say.get(worker_id)
        if not problem:
            if say is not None:
                say.ok(now, "writes succeed again")
                del self._storage_say[worker_id]
            self._storage.pop(worker_id, None)
            return
        if say is None:
            if len(self._storage_say) >= MAX_STORAGE_ENTRIES:
                return
            say = self._storage_say[worker_id] = SayOnce(log, f"worker {worker_id} storage")
        self._storage[worker_id] = (dict(storage), now)
        say.failing(now, str(problem), f"{describe(str(problem))}: {storage.get('detail', '')}")

    def forget_worker(self, worker_id: str, now: float) -> None:
        say = self._storage_say.pop(worker_id, None)
        if say is not None:
            say.ok(now, "the worker is gone")
        self._storage.pop(worker_id, None)

    # --- views --------------------------------------------------------------------------

    def problems(self, now: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        keepa = self.keepa.problem(now)
        if keepa is not None:
            out.append(keepa)
        for worker_id, (storage, at) in sorted(self._storage.items()):
            if now - at > STORAGE_STALE_S:
                continue
            problem = str(storage.get("problem"))
            since = storage.get("since_s")
            out.append(
                {
                    "problem": f"storage_{problem}",
                    "worker": worker_id,
                    "since_s": round(float(since) + (now - at), 3)
                    if isinstance(since, int | float)
                    else None,
                    "says": f"worker {worker_id}: {describe(problem)}",
                    "does": f"{STORAGE_DOES} ({storage.get('held', 0)} results held)",
                    "detail": str(storage.get("detail", ""))[:200],
                }
            )
        return out

    def status(self, now: float) -> dict[str, Any]:
        problems = self.problems(now)
        return {"ok": not problems, "keepa": self.keepa.state, "problems": problems}
