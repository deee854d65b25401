"""Webhooks: one JSON POST per new deal a query's filters passed (``notify`` of a query).

``notify_deals`` is called by ingest right after a commit; it only puts payloads on the queue
of the URL's ``Notifier`` and returns: the pipeline is never delayed, and no Keepa token is
ever spent on a notification. Each URL has one background thread that POSTs the payloads in
order, one at a time. A POST that fails (connection refused, timeout, any status but 2xx) is
retried, the same payload, after a backoff doubling from ``BACKOFF_MIN_S`` to
``BACKOFF_MAX_S``: a receiver that is down for a while gets every deal once it is back, in
order. A receiver that never answers costs the thread ``TIMEOUT_S`` per try and the pipeline
nothing. The queue holds ``MAX_QUEUE`` payloads; beyond that the oldest is dropped (counted).

Notifier states, each change logged once (never a line per retry)::

    OK -> FAILING      a POST failed: "notify <url>: failing (...), retrying"
    FAILING -> OK      a POST succeeded again: "notify <url>: delivering again"

Counted per query in the database (``state`` keys ``query:<name>:notify_sent`` and
``notify_failed``: status shows them per query) and on the notifier (``sent``, ``failed``,
``dropped``).

The payload (``payload()``), JSON, UTF-8::

    {"event": "deal", "query": "used-books", "domain": 1, "asin": "B0...", "title": "...",
     "price_type": 2, "price": 2499, "currency": "USD", "avg90": 3999,
     "drop_percent": 37.5, "profit": 900, "sales_rank": 12000, "offers": 3,
     "links": {"amazon": "https://www.amazon.com/dp/B0...",
               "keepa": "https://keepa.com/#!product/1-B0..."},
     "found_at": 1767261600.0,
     "text": "used-books: <title> 24.99 USD (-37.5 %, profit 9.00) https://www.amazon.com/...",
     "content": "<the same as text>"}

Prices are integers in the smallest currency unit of the domain (cents). ``text`` is what a
Slack incoming webhook shows, ``content`` what a Discord webhook shows: both take this payload
as it is; for ntfy, point ``notify`` at the topic URL (the JSON arrives as the message).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import requests

from common.queries import currency, keepa_url, product_url

log = logging.getLogger(__name__)

TIMEOUT_S = 5.0  # one POST, connect and read
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 60.0
MAX_QUEUE = 10_000
IDLE_WAIT_S = 1.0  # the thread looks at its stop flag at least this often

OK = "ok"
FAILING = "failing"

Counter = Callable[[str, str, int], None]  # (query, counter name, n)


class Notifier:
    """The POST queue and thread of one webhook URL."""

    def __init__(
        self,
        url: str,
        *,
        count: Counter | None = None,
        timeout_s: float = TIMEOUT_S,
        backoff_min_s: float = BACKOFF_MIN_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        max_queue: int = MAX_QUEUE,
    ) -> None:
        self.url = url
        self.count = count
        self.timeout_s = timeout_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.max_queue = max_queue
        self.state = OK
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._session = requests.Session()
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()

    def submit(self, payload: dict[str, Any]) -> None:
        """Queue one payload; never blocks on the network."""
        with self._cond:
            if len(self._queue) >= self.max_queue:
                self._queue.popleft()
                self.dropped += 1
                if self.dropped == 1:
                    log.warning(
                        "notify %s: queue full (%d): dropping the oldest", self.url, self.max_queue
                    )
            self._queue.append(payload)
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify()
        self._thread.join(timeout_s)
        self._session.close()

    def _run(self) -> None:
        backoff = self.backoff_min_s
        while not self._stop.is_set():
            with self._cond:
                if not self._queue:
                    self._cond.wait(IDLE_WAIT_S)
                    continue
                payload = self._queue[0]
            error = self._post(payload)
            query = str(payload.get("query", ""))
            if error is None:
                with self._cond:
                    if self._queue and self._queue[0] is payload:
                        self._queue.popleft()
                self.sent += 1
                self._counted(query, "notify_sent")
                if self.state == FAILING:
                    log.info("notify %s: delivering again", self.url)  # FAILING -> OK
                    self.state = OK
                backoff = self.backoff_min_s
                continue
            self.failed += 1
            self._counted(query, "notify_failed")
            if self.state == OK:
                log.warning("notify %s: failing (%s), retrying with backoff", self.url, error)
                self.state = FAILING  # OK -> FAILING
            self._stop.wait(backoff)
            backoff = min(self.backoff_max_s, backoff * 2)

    def _post(self, payload: Mapping[str, Any]) -> str | None:
        """None when delivered, else why not."""
        try:
            resp = self._session.post(
                self.url,
                data=json.dumps(payload, separators=(",", ":")).encode("utf-8"),
                headers={"Content-Type": "application/json"},
                timeout=self.timeout_s,
            )
        except requests.exceptions.RequestException as exc:
            return type(exc).__name__
        if 200 <= resp.status_code < 300:
            return None
        return f"HTTP {resp.status_code}"

    def _counted(self, query: str, name: str) -> None:
        if self.count is None:
            return
        try:
            self.count(query, name, 1)
        except Exception:  # a count is not worth the thread
            log.debug("notify: counting %s failed", name, exc_info=True)


_NOTIFIERS: dict[str, Notifier] = {}
_LOCK = threading.Lock()


def notifier_for(url: str, count: Counter | None = None) -> Notifier:
    """The process's notifier of ``url`` (started on first use)."""
    with _LOCK:
        n = _NOTIFIERS.get(url)
        if n is None:
            n = _NOTIFIERS[url] = Notifier(url, count=count)
        return n


def payload(query: str, domain: int, deal: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The JSON body for one new deal (see the module docstring)."""
    asin = str(deal["asin"])
    cur = currency(domain)
    price, profit = deal.get("current"), deal.get("profit")
    amazon = product_url(domain, asin)

    def money(v: Any) -> str:
        return f"{v / 100:.2f}" if isinstance(v, int) else "?"

    drop = deal.get("drop_percent")
    text = (
        f"{query}: {deal.get('title') or asin} {money(price)} {cur} "
        f"(-{drop} %, profit {money(profit)}) {amazon}"
    )
    return {
        "event": "deal",
        "query": query,
        "domain": domain,
        "asin": asin,
        "title": deal.get("title"),
        "price_type": deal.get("price_type"),
        "price": price,
        "currency": cur,
        "avg90": deal.get("avg90"),
        "drop_percent": drop,
        "profit": profit,
        "sales_rank": deal.get("sales_rank"),
        "offers": deal.get("offers"),
        "links": {"amazon": amazon, "keepa": keepa_url(domain, asin)},
        "found_at": now,
        "text": text,
        "content": text,
    }


def notify_deals(ctx: Any, domain: int, deals: Sequence[Mapping[str, Any]]) -> int:
    """Queue a POST for each committed deal whose query has ``notify``; returns how many."""
    if not deals:
        return 0
    from workers.stages.deals import query_named

    storage = ctx.storage

    def count(query: str, name: str, n: int) -> None:
        storage.add_query_counter(query, name, n, time.time())

    now = ctx.clock()
    queued = 0
    for deal in deals:
        name = str(deal.get("query") or "")
        url = query_named(ctx.settings, name).notify
        if url:
            notifier_for(url, count).submit(payload(name, domain, deal, now))
            queued += 1
    return queued
