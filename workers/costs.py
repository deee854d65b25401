"""Moved to ``common.costs`` (the workers and the gateway price calls from one source).

This name stays as a re-export for code written against it; import ``common.costs``.
"""

from common.costs import (
    DEAL_PAGE_COST,
    LIGHT_COST_PER_PRODUCT,
    OFFER_PAGE_COST,
    OFFERS_PER_PAGE,
    WINDOW_CALLS,
    ProductCostModel,
    offers_bound_per_product,
)

__all__ = [
    "DEAL_PAGE_COST",
    "LIGHT_COST_PER_PRODUCT",
    "OFFERS_PER_PAGE",
    "OFFER_PAGE_COST",
    "WINDOW_CALLS",
    "ProductCostModel",
    "offers_bound_per_product",
]
