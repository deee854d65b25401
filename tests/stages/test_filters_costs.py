"""Filters (pure functions) and the cost model."""

from __future__ import annotations

from typing import Any

import pytest
from stages.stage_support import product as stage_product

from common.config import FilterSettings
from common.costs import DEAL_PAGE_COST, ProductCostModel, offers_bound_per_product
from workers.filters import check, facts

SETTINGS = FilterSettings(
    max_sales_rank=100_000, min_drop_percent=20.0, min_profit=300, max_offers=10, fee_percent=15.0
)


def product(**figures: int) -> dict[str, Any]:
    """A product with stats (current 1000, avg90 2000, rank 5000, 4 offers unless given);
    its ASIN in lower case, as ``facts`` must upper-case it."""
    return stage_product("b000000001", **figures)


def test_facts_read_the_new_price_type() -> None:
    f = facts(product())
    assert (f.asin, f.current, f.avg90, f.sales_rank, f.offers) == (
        "B000000001",
        1000,
        2000,
        5000,
        4,
    )
    assert f.drop_percent == 50.0
    # profit = avg90 - current - fee% of avg90 = 2000 - 1000 - 300
    assert f.profit(15.0) == 700


def test_a_good_product_passes() -> None:
    assert check(facts(product()), SETTINGS) is None


@pytest.mark.parametrize(
    ("prod", "name", "value"),
    [
        (product(current=-1), "no_price", None),
        (product(avg90=-1), "no_price", None),
        (product(rank=150_000), "sales_rank", 150_000),
        (product(rank=-1), "sales_rank", None),
        (product(current=1700), "drop", 15.0),
        # drop 25 % but profit 2000 - 1500 - 300 = 200 < 300
        (product(current=1500), "profit", 200),
        (product(offers=11), "offers", 11),
    ],
)
def test_each_rejection_names_its_filter(prod: dict[str, Any], name: str, value: Any) -> None:
    failure = check(facts(prod), SETTINGS)
    assert failure is not None and failure.filter == name
    if name != "no_price":
        assert failure.detail["value"] == value


def test_limits_are_inclusive() -> None:
    exact = FilterSettings(
        max_sales_rank=5000, min_drop_percent=50.0, min_profit=700, max_offers=4, fee_percent=15.0
    )
    assert check(facts(product()), exact) is None


def test_offer_count_fallbacks() -> None:
    p = product()
    p["stats"]["current"][11] = -1
    assert facts(p).offers is None
    assert check(facts(p), SETTINGS) is None  # unknown does not reject
    p["stats"]["totalOfferCount"] = 12  # all conditions (Stats.java): no new-offer count
    assert facts(p).offers is None
    p["liveOffersOrder"] = list(range(15))
    assert facts(p).offers == 15
    assert check(facts(p), SETTINGS).filter == "offers"  # type: ignore[union-attr]


def test_avg_falls_back_to_the_stats_interval_average() -> None:
    p = product()
    p["stats"]["avg"] = p["stats"].pop("avg90")
    assert facts(p).avg90 == 2000


def test_garbage_never_raises() -> None:
    for junk in ({}, {"stats": None}, {"stats": {"current": "x"}}, {"asin": 5, "title": 3}):
        f = facts(junk)
        assert check(f, SETTINGS) is not None


# --- costs ----------------------------------------------------------------------------


def test_estimate_starts_from_the_setting_and_rounds_up() -> None:
    m = ProductCostModel(5.0)
    assert m.estimate(50) == 250 and m.estimate(1) == 5 and m.estimate(0) == 1
    m2 = ProductCostModel(6.1)
    assert m2.estimate(3) == 19
    assert DEAL_PAGE_COST == 5


def test_estimate_learns_the_max_of_recent_settles() -> None:
    m = ProductCostModel(5.0, window=3)
    m.observe(tokens_consumed=300, products_found=50)  # 6.0
    assert m.per_product == 6.0 and m.estimate(50) == 300
    m.observe(tokens_consumed=360, products_found=40)  # 9.0
    m.observe(tokens_consumed=0, products_found=0)  # nothing found: ignored
    m.observe(tokens_consumed=60, products_found=10)  # 6.0
    assert m.per_product == 9.0
    m.observe(60, 10)
    m.observe(60, 10)  # the 9.0 leaves the window
    assert m.per_product == 6.0


def test_fit_respects_the_largest_grantable_cost() -> None:
    m = ProductCostModel(6.0)
    assert m.fit(50, 0) == 50  # unknown: the configured batch
    assert m.fit(50, 1200) == 50
    assert m.fit(50, 300) == 50
    assert m.fit(50, 240) == 40
    assert m.fit(50, 100) == 16
    assert m.fit(50, 3) == 1  # never below one product
    assert m.fit(500, 0) == 100  # Keepa's per-call limit
    m.observe(120, 10)  # 12 per product: more offer pages
    assert m.fit(50, 300) == 25


def test_permits_never_ask_less_than_the_documented_worst_case() -> None:
    assert offers_bound_per_product(20) == 12  # two pages of up to 10 offers, 6 each
    assert offers_bound_per_product(21) == 18
    assert offers_bound_per_product(100) == 60
    m = ProductCostModel(5.0, bound_per_product=offers_bound_per_product(20))
    assert m.per_product == 5.0  # the expectation
    assert m.estimate(50) == 600  # the permit: 50 x 12
    assert m.fit(50, 1200) == 50 and m.fit(50, 300) == 25
    m.observe(tokens_consumed=700, products_found=50)  # 14: Keepa charged above its docs
    assert m.estimate(50) == 700


def test_a_missing_current_rank_is_judged_on_its_90_day_average() -> None:
    # The recorded /product body without offers has rank -1 now and a known 90-day average.
    prod = product(rank=-1)
    prod["stats"]["avg90"][3] = 150_000
    f = facts(prod)
    assert f.sales_rank == 150_000
    failure = check(f, SETTINGS)
    assert failure is not None and failure.filter == "sales_rank"
    prod["stats"]["avg90"][3] = 5000
    assert check(facts(prod), SETTINGS) is None
