"""The live deals: commit, refresh, drop, claim the stalest (the ``DealRows`` half of
``Storage``, ``common/storage.py``, which holds the connection, the transactions and the
candidate queue; the same statements run on both backends, and the PostgreSQL backend
overrides ``claim_stale_deals``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from common.storage_reads import _marks

if TYPE_CHECKING:
    from common.storage import Rejection

# Columns of ``deals`` a commit or a refresh writes (besides the keys and the bookkeeping).
DEAL_FIELDS = (
    "title",
    "price_type",
    "current",
    "avg90",
    "drop_percent",
    "sales_rank",
    "offers",
    "profit",
    "raw",
    "query",  # the deal query that found it (issue 19)
)


class DealRows:
    conn: Any
    _lock: threading.RLock
    _GREATEST: str

    if TYPE_CHECKING:

        def _write(self) -> contextlib.AbstractContextManager[Any]: ...
        def transaction(self) -> contextlib.AbstractContextManager[Any]: ...
        def _add_counter(self, key: str, n: int, now: float) -> None: ...
        def _lock_asins(self, domain: int, asins: Sequence[str]) -> None: ...
        def _reject(self, domain: int, rejections: Sequence[Rejection], now: float) -> None: ...

    # --- deals --------------------------------------------------------------------------

    def commit_deals(self, domain: int, deals: Sequence[Mapping[str, Any]], now: float) -> int:
        """Upsert deals (``asin`` plus DEAL_FIELDS, optional ``history``) and remove their
        candidates and any old rejection, in one transaction. ``first_seen`` is kept."""
        if not deals:
            return 0
        with self._write():
            self._lock_asins(domain, [d["asin"] for d in deals])
            for deal in deals:
                self._upsert_deal(domain, deal, now)
                key = (domain, deal["asin"])
                self.conn.execute("DELETE FROM candidates WHERE domain = ? AND asin = ?", key)
                self.conn.execute("DELETE FROM rejections WHERE domain = ? AND asin = ?", key)
            self._add_counter("deals_committed", len(deals), now)
        return len(deals)

    def _upsert_deal(self, domain: int, deal: Mapping[str, Any], now: float) -> None:
        values = [deal.get(f) for f in DEAL_FIELDS]
        history = deal.get("history")
        cols = ", ".join(DEAL_FIELDS)
        updates = ", ".join(f"{f} = excluded.{f}" for f in DEAL_FIELDS)
        self.conn.execute(
            f"INSERT INTO deals (domain, asin, {cols}, history, first_seen, updated_at) "
            f"VALUES (?, ?, {_marks(DEAL_FIELDS)}, ?, ?, ?) "
            f"ON CONFLICT (domain, asin) DO UPDATE SET {updates}, "
            "history = coalesce(excluded.history, deals.history), "
            "updated_at = excluded.updated_at, claim_owner = NULL, claim_expires = NULL",
            (domain, deal["asin"], *values, history, now, now),
        )

    def claim_stale_deals(
        self, domain: int, owner: str, limit: int, *, now: float, due_before: float, ttl_s: float
    ) -> list[str]:
        """Claim up to ``limit`` deals last updated at or before ``due_before``, stalest
        first, for ``ttl_s`` seconds."""
        if limit <= 0:
            return []
        with self._write():
            rows = self.conn.execute(
                "UPDATE deals SET claim_owner = ?, claim_expires = ? WHERE rowid IN "
                "(SELECT rowid FROM deals WHERE domain = ? AND updated_at <= ? AND "
                "(claim_owner IS NULL OR claim_expires <= ?) ORDER BY updated_at, asin LIMIT ?) "
                "RETURNING asin, updated_at",
                (owner, now + ttl_s, domain, due_before, now, limit),
            ).fetchall()
        rows.sort(key=lambda r: (r[1], r[0]))
        return [r[0] for r in rows]

    def refresh_deals(self, domain: int, deals: Sequence[Mapping[str, Any]], now: float) -> int:
        """Rewrite refreshed deals that still qualify (keeping ``first_seen`` and the price
        history) and release their claims."""
        if not deals:
            return 0
        updates = ", ".join(f"{f} = ?" for f in DEAL_FIELDS)
        n = 0
        with self._write():
            for deal in sorted(deals, key=lambda d: str(d["asin"])):  # one lock order
                # UPDATE, not upsert: a deal dropped meanwhile (an expired claim taken over by
                # another worker) stays dropped.
                cur = self.conn.execute(
                    f"UPDATE deals SET {updates}, updated_at = ?, refreshes = refreshes + 1, "
                    "claim_owner = NULL, claim_expires = NULL WHERE domain = ? AND asin = ?",
                    (*(deal.get(f) for f in DEAL_FIELDS), now, domain, deal["asin"]),
                )
                n += cur.rowcount
            self._add_counter("deals_refreshed", n, now)
        return n

    def drop_deals(self, domain: int, rejections: Sequence[Rejection], now: float) -> int:
        """Delete deals that stopped qualifying and record why, in one transaction."""
        if not rejections:
            return 0
        with self._write():
            self._reject(domain, rejections, now)
            self._add_counter("deals_dropped", len(rejections), now)
        return len(rejections)

    def release_deals(self, domain: int, owner: str, asins: Sequence[str] | None = None) -> int:
        """Give back refresh claims (all of ``owner``'s when ``asins`` is None)."""
        with self._write():
            if asins is None:
                cur = self.conn.execute(
                    "UPDATE deals SET claim_owner = NULL, claim_expires = NULL "
                    "WHERE domain = ? AND claim_owner = ?",
                    (domain, owner),
                )
            elif not asins:
                return 0
            else:
                cur = self.conn.execute(
                    "UPDATE deals SET claim_owner = NULL, claim_expires = NULL "
                    f"WHERE domain = ? AND claim_owner = ? AND asin IN ({_marks(asins)})",
                    (domain, owner, *asins),
                )
            return cur.rowcount

    def get_deal(self, domain: int, asin: str) -> dict[str, Any] | None:
        with self._lock:
            cur = self.conn.execute(
                "SELECT * FROM deals WHERE domain = ? AND asin = ?", (domain, asin.upper())
            )
            row = cur.fetchone()
            names = [d[0] for d in cur.description]
        return dict(zip(names, row, strict=True)) if row else None
