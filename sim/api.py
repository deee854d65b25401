"""The simulated Keepa API without HTTP: endpoints, token costs, latency, the admin API.

``KeepaSim.handle`` decides a request — checks the key and the parameters, takes a fault,
applies the acceptance rule and charges the account (atomically, under the account lock),
builds the payload — and returns an ``Outcome`` saying how long to wait before answering.
The HTTP layer waits (holding no lock), then calls ``KeepaSim.respond``, which adds the token
envelope as of the moment of sending. The admin API (``/_sim/...``) is ``KeepaSim.admin``.

Costs (docs/KEEPA.md): ``/token`` 0; ``/deal`` 5 a page; ``/product`` per product *found*
(unknown ASINs cost nothing): 1, or with ``offers=N`` 6 per found page of up to 10 offers
instead — the pages requested are ``ceil(N / 10)``, the pages found ``ceil(offers / 10)``
but at least 1, since the first page is always fetched even when it turns out empty (so a
product without offers costs 6; one whose offer refresh fails costs 1); ``buybox=1`` +2
(not with ``offers``); ``rating=1`` +1 for a product that has rating data ("up to +1").
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from common.keepa import TokenEnvelope
from sim.account import Account, Accounts, valid_key
from sim.catalog import (
    DEFAULT_CATALOG_SIZE,
    DEFAULT_DEAL_INTERVAL_S,
    HOUR_S,
    Catalog,
    Profile,
)
from sim.deals import DealFeed, parse_selection
from sim.faults import DEFAULT_DELAY_S, KINDS, FaultHit, Faults, normalize_path
from sim.params import (
    ApiError,
    as_int,
    check_range,
    domain_param,
    flag_param,
    int_param,
    rejected,
)
from sim.rand import unit

log = logging.getLogger(__name__)

# Costs, tokens.
DEAL_COST = 5
OFFER_PAGE_COST = 6
OFFERS_PER_PAGE = 10
BUYBOX_COST = 2
RATING_COST = 1
MAX_ASINS_PER_CALL = 100
OFFERS_MIN = 20
# Keepa's official clients document at most 20 ASINs a call with offers; Keepa accepted 50 in
# 2025. The simulator accepts what Keepa accepted unless strict_offer_cap is set.
MAX_ASINS_WITH_OFFERS = 20
OFFERS_TOO_FEW = "Either no or a minimum of 20 offers must be requested."
NO_OFFERS_COST = 5  # a product whose offer refresh succeeded with no offer (Keepa's docs)
OFFERS_MAX = 100
STATS_MAX_DAYS = 3650
DEFAULT_UPDATE_HOURS = 1  # Keepa refreshes a product whose copy is older than an hour

# Latency before latency_scale, seconds. Offer requests: 2-20 s, about 5 s on average.
PRODUCT_LATENCY_S = 0.05
PRODUCT_LATENCY_PER_ASIN_S = 0.004
OFFER_LATENCY_MIN_S = 2.0
OFFER_LATENCY_MEAN_EXTRA_S = 3.0  # exponential on top of the minimum: mean 5 s
OFFER_LATENCY_MAX_S = 20.0
OFFER_LATENCY_PER_PRODUCT_S = 0.01
DEAL_LATENCY_S = 0.3

ASIN_RE = re.compile(r"^[A-Z0-9]{10}$")
ROUTES = {"/token": "token", "/product": "product", "/deal": "deal"}
MAX_CATALOG_PAGE = 100_000
DEAL_SELECTIONS_KEPT = 50


@dataclass
class Outcome:
    """What to answer to one API request, and when."""

    status: int
    body: dict[str, Any]
    account: Account | None = None
    consumed: int = 0
    latency_s: float = 0.0  # simulated processing time, counted from ``started``
    fault: FaultHit | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def fault_kind(self) -> str | None:
        return self.fault.kind if self.fault else None

    def wait_s(self, now_monotonic: float) -> float:
        """How long to wait before answering: what is left of the latency, plus a delay
        fault's full delay."""
        left = max(0.0, self.latency_s - (now_monotonic - self.started))
        if self.fault is not None and self.fault.kind == "delay":
            left += self.fault.delay_s
        return left


def latency_s(seq: int, seed: int, n_asins: int, n_found: int, offers: bool) -> float:
    """Keepa-like processing time of a ``/product`` call (before ``latency_scale``): grows
    with the ASINs asked for and, much more, with offers (2-20 s, ~5 s on average)."""
    if not offers:
        return PRODUCT_LATENCY_S + PRODUCT_LATENCY_PER_ASIN_S * n_asins
    r = unit(seed, 500, seq)
    extra = -OFFER_LATENCY_MEAN_EXTRA_S * math.log(1.0 - r)
    base = min(OFFER_LATENCY_MAX_S, OFFER_LATENCY_MIN_S + extra)
    return min(OFFER_LATENCY_MAX_S, base + OFFER_LATENCY_PER_PRODUCT_S * n_found)


def offer_pages(offers: int, n_offers: int) -> int:
    """Pages charged for ``offers=N`` on a product with ``n_offers`` new offers."""
    requested = math.ceil(offers / OFFERS_PER_PAGE)
    return max(1, min(requested, math.ceil(n_offers / OFFERS_PER_PAGE)))


class KeepaSim:
    """The whole simulated service: accounts, catalog, deal feed, faults."""

    def __init__(
        self,
        *,
        refill_rate: int = 20,
        refill_period_s: float = 60.0,
        tokens: int | None = None,
        seed: int = 1,
        latency_scale: float = 0.0,
        catalog_size: int = DEFAULT_CATALOG_SIZE,
        deal_interval_s: float = DEFAULT_DEAL_INTERVAL_S,
        offer_fail_rate: float = 0.0,
        clock: Callable[[], float] = time.time,
        strict_offer_cap: bool = False,
    ) -> None:
        if refill_rate < 1:
            raise ValueError("refill_rate must be >= 1")
        if refill_period_s <= 0:
            raise ValueError("refill_period_s must be > 0")
        if latency_scale < 0:
            raise ValueError("latency_scale must be >= 0")
        if not 0.0 <= offer_fail_rate <= 1.0:
            raise ValueError("offer_fail_rate must be within 0..1")
        self.seed = seed
        self.strict_offer_cap = strict_offer_cap
        # The most ASINs one /product request with offers carried (the e2e tests assert <= 20).
        self.max_offer_asins = 0
        self.offer_requests = 0
        self._offer_lock = threading.Lock()
        # The last selections /deal executed, as sent (for tests: /_sim/state deal_selections).
        self.deal_selections: deque[Any] = deque(maxlen=DEAL_SELECTIONS_KEPT)
        self.latency_scale = latency_scale
        self.offer_fail_rate = offer_fail_rate
        self.clock = clock
        self.catalog = Catalog(seed, catalog_size, deal_interval_s)
        self.feed = DealFeed(self.catalog)
        self.accounts = Accounts(
            refill_rate=refill_rate, refill_period_s=refill_period_s, tokens=tokens
        )
        self.faults = Faults()
        self._seq = itertools.count()
        self._seq_lock = threading.Lock()
        self.handlers: dict[str, Callable[[Account, Mapping[str, str], bytes, float], Outcome]] = {
            "token": self.handle_token,
            "product": self.handle_product,
            "deal": self.handle_deal,
        }
        self.admin_handlers: dict[str, tuple[str, Callable[[Mapping[str, str], float], Any]]] = {
            "state": ("GET", self.admin_state),
            "catalog": ("GET", self.admin_catalog),
            "plan": ("POST", self.admin_plan),
            "consume": ("POST", self.admin_consume),
            "tokens": ("POST", self.admin_tokens),
            "fault": ("POST", self.admin_fault),
            "feed": ("POST", self.admin_feed),
        }

    def _next_seq(self) -> int:
        with self._seq_lock:
            return next(self._seq)

    # --- the API ------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: Mapping[str, str], body: bytes) -> Outcome:
        """Decide one API request (charging it when it runs); see the module docstring."""
        now = self.clock()
        started = time.monotonic()
        route = ROUTES.get(normalize_path(path))
        if route is None:
            err = ApiError(404, f"no such endpoint: {normalize_path(path)}")
            return Outcome(404, err.body(), started=started)
        key = query.get("key") or ""
        if not valid_key(key):
            err = rejected("missing or malformed key")
            return Outcome(400, err.body(), started=started)
        account = self.accounts.get(key, now)
        account.count_call(route)
        fault: FaultHit | None = None
        try:
            if not account.paid:
                raise ApiError(402, "this key has no access (payment required)")
            fault = self.faults.take(path)
            if fault is not None and fault.kind == "500":
                raise ApiError(500, "injected internal server error")
            if fault is not None and fault.kind == "503":
                raise ApiError(503, "injected: the backend is down, retry later")
            outcome = self.handlers[route](account, query, body, now)
        except ApiError as exc:
            outcome = Outcome(exc.status, exc.body(), account)
        outcome.fault = fault
        outcome.started = started
        account.record_status(outcome.status)
        return outcome

    def respond(self, outcome: Outcome) -> dict[str, Any]:
        """The JSON body of an outcome, with the token envelope as of now."""
        now = self.clock()
        processing_ms = round((time.monotonic() - outcome.started) * 1000)
        if outcome.account is not None:
            envelope = outcome.account.envelope(now, outcome.consumed, processing_ms)
        else:  # no account (bad key, unknown path): a zero envelope
            envelope = TokenEnvelope(
                timestamp_ms=int(now * 1000),
                tokens_left=0,
                refill_in_ms=0,
                refill_rate=0,
                processing_time_ms=processing_ms,
            ).to_wire()
        return {**envelope, **outcome.body}

    @staticmethod
    def _charge(account: Account, now: float, cost: int) -> None:
        """The acceptance rule: charge ``cost``, or refuse the request with 429."""
        if not account.try_charge(now, cost).accepted:
            raise ApiError(429, "not enough tokens: the balance is not positive")

    def handle_token(
        self, account: Account, query: Mapping[str, str], body: bytes, now: float
    ) -> Outcome:
        return Outcome(200, {}, account)

    def handle_product(
        self, account: Account, query: Mapping[str, str], body: bytes, now: float
    ) -> Outcome:
        if "domain" not in query:
            raise rejected("missing domain")
        domain = domain_param(query["domain"])
        raw_asins = query.get("asin")
        if not raw_asins:
            raise rejected("missing asin")
        asins = [a.strip().upper() for a in raw_asins.split(",")]
        if any(not ASIN_RE.match(a) for a in asins):
            raise rejected("asin must be a comma-separated list of 10-character ASINs")
        if len(asins) > MAX_ASINS_PER_CALL:
            raise rejected(f"{len(asins)} ASINs: at most {MAX_ASINS_PER_CALL} a call")
        stats = int_param(query, "stats", lo=1, hi=STATS_MAX_DAYS)
        history = not ("history" in query and not flag_param(query, "history"))
        offers = int_param(query, "offers")
        if offers == 0:
            raise rejected("offers=0 is not allowed")
        if offers is not None and 1 <= offers < OFFERS_MIN:
            # Recorded: HTTP 200 with an error object, no products, nothing charged.
            body = {
                "error": {"type": "invalidParameter", "message": OFFERS_TOO_FEW, "details": None}
            }
            return Outcome(200, body, account)
        if offers is not None:
            check_range("offers", offers, OFFERS_MIN, OFFERS_MAX)
            n_distinct = len(set(asins))
            with self._offer_lock:
                self.offer_requests += 1
                self.max_offer_asins = max(self.max_offer_asins, n_distinct)
            if self.strict_offer_cap and n_distinct > MAX_ASINS_WITH_OFFERS:
                raise rejected(
                    f"{n_distinct} ASINs with offers: at most {MAX_ASINS_WITH_OFFERS} a call "
                    "(Keepa's documented cap; --strict-offer-cap)"
                )
        update = int_param(query, "update", lo=-1, hi=1_000_000)
        buybox = flag_param(query, "buybox")
        rating = flag_param(query, "rating")

        seq = self._next_seq()
        found: dict[str, Profile] = {}
        for a in asins:
            index = self.catalog.index(a)
            if index is not None and a not in found:
                found[a] = self.catalog.profile(index)
        cost = 0
        plan: list[tuple[Profile, int | None, bool]] = []  # (profile, offers returned, ok)
        for p in found.values():
            returned: int | None = None
            ok = True
            if offers is not None:
                n_new, _ = self.catalog.offer_counts(p, now)
                ok = not (
                    self.offer_fail_rate > 0
                    and unit(self.seed, 400, seq, p.index) < self.offer_fail_rate
                )
                pages = offer_pages(offers, n_new)
                if not ok:
                    cost += 1
                elif n_new == 0:
                    cost += NO_OFFERS_COST
                else:
                    cost += OFFER_PAGE_COST * pages
                returned = min(n_new, pages * OFFERS_PER_PAGE) if ok else 0
            else:
                cost += 1 + (BUYBOX_COST if buybox else 0)
            if rating and p.rating >= 0:
                cost += RATING_COST
            plan.append((p, returned, ok))

        self._charge(account, now, cost)

        products = []
        seen: set[str] = set()
        for a in asins:  # Keepa answers an unknown ASIN with an INVALID product
            if a not in found and a not in seen:
                seen.add(a)
                products.append(self.catalog.invalid_product(a, domain))
        for p, returned, ok in plan:
            if offers is not None:
                self.catalog.refresh(p, now)  # offers are fetched live
                data_time = now
            else:
                data_time = self.catalog.last_update(p, now)
                if update != -1:
                    max_age_s = (DEFAULT_UPDATE_HOURS if update is None else update) * HOUR_S
                    if now - data_time > max_age_s:
                        self.catalog.refresh(p, now)
                        data_time = now
            products.append(
                self.catalog.product(
                    p,
                    data_time,
                    domain=domain,
                    stats_days=stats,
                    history=history,
                    offers_returned=returned,
                    offers_ok=ok,
                    buybox=buybox,
                    rating=rating,
                )
            )
        delay = latency_s(seq, self.seed, len(asins), len(found), offers is not None)
        return Outcome(
            200,
            {"products": products},
            account,
            consumed=cost,
            latency_s=delay * self.latency_scale,
        )

    def handle_deal(
        self, account: Account, query: Mapping[str, str], body: bytes, now: float
    ) -> Outcome:
        if body.strip():
            text = body.decode("utf-8", errors="replace")
        elif "selection" in query:
            text = query["selection"]
        else:
            raise rejected("missing selection")
        try:
            selection = json.loads(text)
        except ValueError:
            raise rejected("selection is not valid JSON") from None
        q = parse_selection(selection)
        self._charge(account, now, DEAL_COST)
        with self._offer_lock:
            self.deal_selections.append(selection)
        deals = self.feed.page(q, now)
        return Outcome(
            200,
            {"deals": deals, "dealsCached": False},  # top-level on Keepa (recorded)
            account,
            consumed=DEAL_COST,
            latency_s=DEAL_LATENCY_S * self.latency_scale,
        )

    # --- admin (/_sim/...) --------------------------------------------------------------

    def admin(self, method: str, name: str, query: Mapping[str, str]) -> tuple[int, Any]:
        """One admin request: (status, JSON body). Errors are 400/404/405 with ``error``."""
        entry = self.admin_handlers.get(name.strip("/"))
        if entry is None:
            return 404, {"error": f"no such admin endpoint: /_sim/{name}"}
        wanted, fn = entry
        if method != wanted:
            return 405, {"error": f"/_sim/{name} takes {wanted}"}
        try:
            return 200, fn(query, self.clock())
        except ApiError as exc:
            return 400, {"error": exc.message}

    def _admin_account(self, query: Mapping[str, str], now: float) -> Account:
        key = query.get("key") or ""
        if not valid_key(key):
            raise rejected("key missing or malformed")
        return self.accounts.get(key, now)

    @staticmethod
    def _admin_int(query: Mapping[str, str], name: str, lo: int, hi: int) -> int:
        if name not in query:
            raise rejected(f"{name} is required")
        value = as_int(name, query[name])
        check_range(name, value, lo, hi)
        return value

    @staticmethod
    def _admin_float(query: Mapping[str, str], name: str, default: float, lo: float) -> float:
        raw = query.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise rejected(f"{name} must be a number") from None
        if not value >= lo or math.isinf(value):
            raise rejected(f"{name} must be a number >= {lo}")
        return value

    def admin_state(self, query: Mapping[str, str], now: float) -> dict[str, Any]:
        state = self._admin_account(query, now).state(now)
        state["faults_pending"] = self.faults.pending()
        state["feed_stale_s"] = self.feed.stale_s
        state["seed"] = self.seed
        state["max_offer_asins"] = self.max_offer_asins
        state["offer_requests"] = self.offer_requests
        state["strict_offer_cap"] = self.strict_offer_cap
        with self._offer_lock:
            state["deal_selections"] = list(self.deal_selections)
        state["catalog_size"] = self.catalog.size
        return state

    def admin_catalog(self, query: Mapping[str, str], now: float) -> dict[str, Any]:
        offset = int_param(query, "offset", default=0, lo=0) or 0
        limit = int_param(query, "limit", default=100, lo=0, hi=MAX_CATALOG_PAGE) or 0
        return {
            "asins": self.catalog.asins(offset, limit),
            "offset": offset,
            "total": self.catalog.size,
        }

    def admin_plan(self, query: Mapping[str, str], now: float) -> dict[str, Any]:
        account = self._admin_account(query, now)
        account.set_plan(now, self._admin_int(query, "refill_rate", 1, 1_000_000))
        return account.state(now)

    def admin_consume(self, query: Mapping[str, str], now: float) -> dict[str, Any]:
        account = self._admin_account(query, now)
        charge = account.consume_external(now, self._admin_int(query, "tokens", 0, 10**9))
        return {"accepted": charge.accepted, "tokens_left": charge.tokens_left}

    def admin_tokens(self, query: Mapping[str, str], now: float) -> dict[str, Any]:
        account = self._admin_account(query, now)
        account.set_tokens(now, self._admin_int(query, "tokens", -(10**9), 10**9))
        return account.state(now)

    def admin_fault(self, query: Mapping[str, str], now: float) -> dict[str, Any]:
        kind = query.get("kind", "")
        if kind not in KINDS:
            raise rejected(f"kind must be one of {', '.join(KINDS)}")
        count = int_param(query, "count", default=1, lo=1, hi=1_000_000) or 1
        delay_s = self._admin_float(query, "delay_s", DEFAULT_DELAY_S, 0.0)
        path = query.get("path") or None
        if path is not None and normalize_path(path) not in ROUTES:
            raise rejected(f"path must be one of {', '.join(ROUTES)}")
        self.faults.add(kind, count, delay_s=delay_s, path=path)
        return {"pending": self.faults.pending()}

    def admin_feed(self, query: Mapping[str, str], now: float) -> dict[str, Any]:
        if "stale_s" not in query:
            raise rejected("stale_s is required")
        self.feed.set_stale(self._admin_float(query, "stale_s", 0.0, 0.0))
        return {"stale_s": self.feed.stale_s}

    # --- totals for the log -------------------------------------------------------------

    def totals(self) -> dict[str, Any]:
        now = self.clock()
        out: dict[str, Any] = {"accounts": 0, "requests": 0, "tokens_consumed": 0}
        statuses: dict[str, int] = {}
        for account in self.accounts.all():
            state = account.state(now)
            out["accounts"] += 1
            out["requests"] += state["requests"]
            out["tokens_consumed"] += state["tokens_consumed"]
            for status, n in state["statuses"].items():
                statuses[status] = statuses.get(status, 0) + n
        out["statuses"] = dict(sorted(statuses.items()))
        return out
