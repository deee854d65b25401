"""What to ask the broker for: token cost estimates, learned from what Keepa charged. One
source for the workers and the gateway (``gateway.pricing``), so it lives in ``common``.

A ``/deal`` page costs ``DEAL_PAGE_COST`` (5). A ``/product`` call with ``offers=N`` costs
6 tokens per found page of up to 10 offers per product (1 when the offer refresh fails),
nothing for an unknown ASIN; ``stats`` and ``history`` are free. So the cost per product
depends on the catalog, and ``ProductCostModel`` learns it: each settled call gives
``tokensConsumed / products found``, and the estimate is the largest of the last
``WINDOW_CALLS`` such figures (erring high: a permit a little too large only delays the next
grant a little; one too small lets the fleet overdraw the account). Before any observation it
is ``worker.cost_per_product``.

Calls without offers (refresh) have a model of their own, starting at
``LIGHT_COST_PER_PRODUCT`` (1). The permit for a call on ``n`` ASINs is
``ceil(estimate × n)``; batch sizes keep that within the largest permit the account can ever
grant (``fit``).

Workers share what they learned through the database (``state`` keys ``cost_per_product``
and ``cost_per_product_light``): each writes its own figure after a call and takes the
larger of its own and the shared one, so a new worker does not overdraw the account
relearning the catalog, and the figure still follows the catalog down when it gets cheaper.
"""

from __future__ import annotations

import math
from collections import deque

from common.keepa import MAX_ASINS_PER_CALL

DEAL_PAGE_COST = 5
# A /product call without offers: 1 token per found product (refresh's light update).
LIGHT_COST_PER_PRODUCT = 1.0
# With offers=N: 6 tokens per found page of up to 10 offers, per product (docs/KEEPA.md).
OFFER_PAGE_COST = 6
OFFERS_PER_PAGE = 10
WINDOW_CALLS = 8


def offers_bound_per_product(offers: int) -> float:
    """The most Keepa charges for one found product with ``offers=N``: every page of up to
    10 offers that N allows, at 6 tokens each (12 for offers=20)."""
    return float(OFFER_PAGE_COST * math.ceil(offers / OFFERS_PER_PAGE))


class ProductCostModel:
    """Tokens per found product of one kind of ``/product`` call, learned from settles.

    ``per_product`` is the learned expectation (what a product usually costs: status, tokens
    per deal). The permit asks for ``permit_per_product``: the larger of that and
    ``bound_per_product``, the most Keepa's documented pricing can charge for the call. A
    permit below what the call may cost would let the fleet overdraw the account past
    ``max_deficit`` and, with other calls in flight, send a request at a balance <= 0: a 429
    caused by the fleet (the first benchmark measured both with permits at the estimate).
    The learned figure still wins when Keepa charges more than its documentation says.
    """

    def __init__(
        self,
        initial_per_product: float,
        *,
        bound_per_product: float = 0.0,
        window: int = WINDOW_CALLS,
    ) -> None:
        if initial_per_product <= 0:
            raise ValueError("initial_per_product must be > 0")
        self.initial = float(initial_per_product)
        self.bound = float(bound_per_product)
        self._recent: deque[float] = deque(maxlen=window)
        # What other workers learned (shared through the database); None = nothing yet.
        self._shared: float | None = None

    @property
    def learned(self) -> float | None:
        """This worker's own figure (the largest of its recent calls), None before any."""
        return max(self._recent) if self._recent else None

    @property
    def per_product(self) -> float:
        """The estimate: the larger of this worker's and the fleet's learned figures (erring
        high), else the initial one."""
        known = [v for v in (self.learned, self._shared) if v is not None]
        return max(known) if known else self.initial

    def consider(self, shared: object) -> None:
        """Take the fleet's learned figure into account (ignored unless a positive number)."""
        if isinstance(shared, int | float) and not isinstance(shared, bool) and shared > 0:
            self._shared = float(shared)

    @property
    def permit_per_product(self) -> float:
        """What a permit reserves per ASIN: never less than the call may cost."""
        return max(self.per_product, self.bound)

    def estimate(self, n_asins: int) -> int:
        """The permit to ask for a call on ``n_asins`` ASINs (at least 1)."""
        return max(1, math.ceil(self.permit_per_product * max(0, n_asins) - 1e-9))

    def observe(self, tokens_consumed: int, products_found: int) -> bool:
        """Learn from one settled call; True when it taught something. A call that found
        nothing teaches nothing."""
        if products_found <= 0 or tokens_consumed < 0:
            return False
        self._recent.append(tokens_consumed / products_found)
        return True

    def fit(self, wanted: int, max_cost: int) -> int:
        """How many ASINs one call may carry: ``wanted``, at most 100, and — when the largest
        grantable permit ``max_cost`` is known (> 0) — no more than it pays for. At least 1:
        a single product is the smallest call there is."""
        n = max(1, min(wanted, MAX_ASINS_PER_CALL))
        if max_cost > 0:
            n = min(n, max(1, math.floor(max_cost / self.permit_per_product + 1e-9)))
        return n

    def __repr__(self) -> str:
        return (
            f"ProductCostModel(per_product={self.per_product:.2f}, "
            f"permit_per_product={self.permit_per_product:.2f})"
        )
