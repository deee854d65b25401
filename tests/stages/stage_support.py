"""Test helpers of the stage tests: a fake permit client and settings."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from typing import Any

from common.config import FilterSettings, KeepaSettings, Settings, WorkerSettings
from common.errors import KeepaError, KeepaServerError, PermitRejected
from common.keepa import KeepaResponse, TokenEnvelope


class FakePermits:
    """Stands in for workers.permit_client.PermitClient: checks the cost, runs fn, records.

    ``grantable`` > 0 makes requests above it fail with PermitRejected("too_large"), as the
    broker does; ``known_max_cost`` is what ``max_cost()`` says (0 = unknown) and, as with the
    real client (its link keeps the ``max_cost`` of a REJECT), becomes ``grantable`` once a
    request was rejected.
    """

    def __init__(self, *, grantable: int = 0, known_max_cost: int = 0) -> None:
        self.grantable = grantable
        self.known_max_cost = known_max_cost
        self.requests: list[int] = []  # every cost asked for, granted or not
        self.priorities: list[int] = []  # the priority of each request, in order
        self.settles: list[tuple[int, int | None]] = []  # (permit cost, tokens consumed)
        self.rejected: list[int] = []
        self.advances: list[tuple[str, int]] = []
        self.reports: list[dict[str, Any]] = []
        self.stopping = False
        self.stop_after_calls: int | None = None  # set stopping once this many calls settled
        self.worker_id = "w-test"
        self.spare_tokens = 0  # what spare() says: tokens the next refill would lose

    def call(
        self,
        cost: int,
        fn: Callable[[], KeepaResponse],
        *,
        priority: int = 0,
        deadline_s: float | None = None,
    ) -> KeepaResponse:
        assert isinstance(cost, int) and not isinstance(cost, bool), cost
        assert cost > 0, f"permit of {cost} tokens asked"
        self.requests.append(cost)
        self.priorities.append(priority)
        if self.grantable and cost > self.grantable:
            self.rejected.append(cost)
            self.known_max_cost = self.grantable
            raise PermitRejected("too_large", self.grantable)
        try:
            resp = fn()
        except KeepaError as exc:
            env = exc.envelope
            self.settles.append((cost, env.tokens_consumed if env is not None else None))
            raise
        self.settles.append((cost, resp.envelope.tokens_consumed))
        if self.stop_after_calls is not None and len(self.settles) >= self.stop_after_calls:
            self.stopping = True
        return resp

    def spare(self) -> int:
        return self.spare_tokens

    def max_cost(self) -> int:
        return self.known_max_cost

    def advance(self, stage: str, items: int = 0) -> None:
        self.advances.append((stage, items))

    def report(self, info: dict[str, Any]) -> None:
        self.reports.append(info)

    @property
    def granted(self) -> list[int]:
        return [cost for cost, _ in self.settles]


def make_settings(**sections: dict[str, Any]) -> Settings:
    """Settings with test-friendly filters; ``worker={...}`` etc. override fields."""
    filters = {
        "max_sales_rank": 200_000,
        "min_drop_percent": 15.0,
        "min_profit": 300,
        "max_offers": 30,
        "fee_percent": 15.0,
        **sections.get("filters", {}),
    }
    return Settings(
        keepa=dataclasses.replace(KeepaSettings(), **sections.get("keepa", {})),
        worker=dataclasses.replace(WorkerSettings(), **sections.get("worker", {})),
        filters=FilterSettings(**filters),
    )


KEEPA_EPOCH_MINUTES = 21_564_000


def keepa_minute(unix_s: float) -> int:
    return int(unix_s // 60) - KEEPA_EPOCH_MINUTES


def envelope(consumed: int) -> TokenEnvelope:
    return TokenEnvelope(
        timestamp_ms=int(time.time() * 1000),
        tokens_left=1000,
        refill_in_ms=1000,
        refill_rate=20,
        tokens_consumed=consumed,
    )


def product(
    asin: str, current: int = 1000, avg90: int = 2000, rank: int = 5000, offers: int = 4
) -> dict[str, Any]:
    """A Keepa product as /product returns it with stats (NEW price type, index 1)."""
    cur = [-1] * 19
    cur[1], cur[3], cur[11] = current, rank, offers
    avg = [-1] * 19
    avg[1] = avg90
    return {
        "asin": asin,
        "title": f"product {asin}",
        "stats": {"current": cur, "avg90": avg},
        "csv": [[1, current]],
    }


class FakeKeepa:
    """A KeepaClient stand-in with a fixed catalog, for deterministic stage tests: records
    every call; charges ``per_product`` tokens per found product with offers (1 without), 5 per
    deal page."""

    def __init__(
        self,
        products: dict[str, dict[str, Any]] | None = None,
        deals: list[dict[str, Any]] | None = None,
        per_product: int = 6,
    ) -> None:
        self.products = products or {}
        self.deals = deals or []
        self.per_product = per_product
        self.product_calls: list[dict[str, Any]] = []
        self.deal_calls: list[dict[str, Any]] = []
        self.fail_product_call: int | None = None  # index of a product call that fails

    def product(self, asins: Any, **kwargs: Any) -> KeepaResponse:
        asin_list = list(asins)
        self.product_calls.append({"asins": asin_list, **kwargs})
        if self.fail_product_call == len(self.product_calls) - 1:
            raise KeepaServerError("/product: HTTP 500", status=500, envelope=envelope(0))
        found = []
        for a in asin_list:
            if a in self.products:
                p = copy.deepcopy(self.products[a])
                if kwargs.get("history") is False:
                    p.pop("csv", None)
                found.append(p)
        per_product = self.per_product if kwargs.get("offers") else 1
        return KeepaResponse(200, envelope(per_product * len(found)), {"products": found}, 0.0)

    def deal(self, selection: dict[str, Any]) -> KeepaResponse:
        self.deal_calls.append(dict(selection))
        page = int(selection["page"])
        dr = self.deals[page * 150 : (page + 1) * 150]
        return KeepaResponse(200, envelope(5), {"deals": {"dr": copy.deepcopy(dr)}}, 0.0)


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
