"""The pipeline database's read-only figures: what the stages' urgency, ``keepa-fleet
status``, the metrics and ``keepa-fleet db check`` read (the ``StorageReads`` half of
``Storage``, ``common/storage.py``, which holds the connection; the same statements run on
both backends).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any


class StorageReads:
    _lock: threading.RLock

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError  # Storage's (and the PostgreSQL backend's)

    def get_state(self, key: str, default: Any = None) -> Any:
        raise NotImplementedError  # Storage's

    # --- queries for urgency and status --------------------------------------------------

    def claimable_candidates(self, domain: int, now: float) -> int:
        rows = self._read(
            "SELECT count(*) FROM candidates WHERE domain = ? AND "
            "(claim_owner IS NULL OR claim_expires <= ?)",
            (domain, now),
        )
        return int(rows[0][0])

    def stalest_claimable_deal(self, domain: int, now: float) -> float | None:
        """``updated_at`` of the stalest deal not claimed by anyone, or None."""
        rows = self._read(
            "SELECT min(updated_at) FROM deals WHERE domain = ? AND "
            "(claim_owner IS NULL OR claim_expires <= ?)",
            (domain, now),
        )
        return None if rows[0][0] is None else float(rows[0][0])

    def totals(self, now: float | None = None) -> dict[str, Any]:
        """Pipeline figures for ``keepa-fleet status`` (all domains)."""
        now = time.time() if now is None else now

        def one(sql: str, params: Sequence[Any] = ()) -> Any:
            return self._read(sql, params)[0][0]

        with self._lock:
            claimed = one(
                "SELECT count(*) FROM candidates WHERE claim_owner IS NOT NULL "
                "AND claim_expires > ?",
                (now,),
            )
            queued = one("SELECT count(*) FROM candidates")
            oldest_candidate = one("SELECT min(added_at) FROM candidates")
            stalest_deal = one("SELECT min(updated_at) FROM deals")
            reasons = dict(
                self._read("SELECT reason, count(*) FROM rejections GROUP BY reason ORDER BY 1")
            )
            return {
                "candidates_waiting": int(queued) - int(claimed),
                "candidates_claimed": int(claimed),
                "deals_live": int(one("SELECT count(*) FROM deals")),
                "deals_claimed": int(
                    one(
                        "SELECT count(*) FROM deals WHERE claim_owner IS NOT NULL "
                        "AND claim_expires > ?",
                        (now,),
                    )
                ),
                "deals_committed": int(self.get_state("deals_committed", 0)),
                "deals_refreshed": int(self.get_state("deals_refreshed", 0)),
                "deals_dropped": int(self.get_state("deals_dropped", 0)),
                "rejections": int(sum(reasons.values())),
                "rejections_by_reason": {str(k): int(v) for k, v in reasons.items()},
                "asins_seen": int(one("SELECT count(*) FROM seen")),
                "oldest_candidate_age_s": _age(now, oldest_candidate),
                "stalest_deal_age_s": _age(now, stalest_deal),
            }

    # --- deal queries (issue 19): which query found what -----------------------------------

    def queries_of(self, table: str, domain: int, asins: Sequence[str]) -> dict[str, str]:
        """The ``query`` of each ASIN in ``candidates`` or ``deals`` ('' when none)."""
        if table not in ("candidates", "deals"):
            raise ValueError(f"no query column in table {table!r}")
        if not asins:
            return {}
        rows = self._read(
            f"SELECT asin, query FROM {table} WHERE domain = ? AND asin IN ({_marks(asins)})",
            (domain, *asins),
        )
        return {str(a): str(q or "") for a, q in rows}

    def pipeline_domains(self, now: float) -> list[int]:
        """Domains with claimable candidates or deals, most waiting candidates first."""
        rows = self._read(
            "SELECT domain, sum(n) FROM (SELECT domain, count(*) AS n FROM candidates WHERE "
            "claim_owner IS NULL OR claim_expires <= ? GROUP BY domain UNION ALL "
            "SELECT domain, 0 FROM deals GROUP BY domain) GROUP BY domain ORDER BY 2 DESC, 1",
            (now,),
        )
        return [int(r[0]) for r in rows]

    def query_totals(self) -> dict[str, dict[str, int]]:
        """Per query: ``deals_live`` and ``candidates_queued`` (waiting or claimed)."""
        out: dict[str, dict[str, int]] = {}
        for table, key in (("deals", "deals_live"), ("candidates", "candidates_queued")):
            for name, n in self._read(f"SELECT query, count(*) FROM {table} GROUP BY query"):
                out.setdefault(str(name or ""), {})[key] = int(n)
        return out

    def integrity_check(self) -> str:
        """``ok``, or what is wrong: SQLite's own check of the file, then the pipeline's rule
        that an ASIN is in at most one of candidates/deals/rejections."""
        rows = self._read("PRAGMA integrity_check")
        found = "; ".join(str(r[0]) for r in rows)
        return found if found != "ok" else self._one_table_check()

    def _one_table_check(self) -> str:
        problems = []
        for a, b in (
            ("candidates", "deals"),
            ("candidates", "rejections"),
            ("deals", "rejections"),
        ):
            n = self._read(
                f"SELECT count(*) FROM {a} x JOIN {b} y ON x.domain = y.domain AND x.asin = y.asin"
            )[0][0]
            if n:
                problems.append(f"{n} ASINs both in {a} and {b}")
        return "; ".join(problems) or "ok"


def _age(now: float, then: Any) -> float | None:
    return None if then is None else round(max(0.0, now - float(then)), 3)


def _marks(items: Sequence[Any]) -> str:
    return ", ".join("?" * len(items))
