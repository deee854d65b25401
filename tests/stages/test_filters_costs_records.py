"""The filters' failures in full (name and every figure), the facts read from odd products,
and the cost model's edges. Written against the mutants that survived the first
``make mutate`` (docs/MUTATION.md)."""

from __future__ import annotations

from typing import Any

import pytest

from common.config import FilterSettings
from workers.costs import ProductCostModel
from workers.filters import PRICE_USED, Facts, Failure, check, facts

SETTINGS = FilterSettings(
    max_sales_rank=100_000, min_drop_percent=20.0, min_profit=300, max_offers=10, fee_percent=15.0
)


def stats_product(
    current: list[int] | None = None, avg90: list[int] | None = None, **extra: Any
) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    if current is not None:
        stats["current"] = current
    if avg90 is not None:
        stats["avg90"] = avg90
    stats.update(extra.pop("stats", {}))
    return {"asin": "b0test0001", "stats": stats, **extra}


def row(**at: int) -> list[int]:
    """A csv/stats row of 36 slots (-1 = none), the given indexes set."""
    values = [-1] * 36
    for index, value in at.items():
        values[int(index.lstrip("i"))] = value
    return values


def test_each_failure_names_its_filter_and_every_figure() -> None:
    def f(**kw: Any) -> Facts:
        base: dict[str, Any] = {
            "asin": "A",
            "title": None,
            "current": 1000,
            "avg90": 2000,
            "sales_rank": 5000,
            "offers": 4,
        }
        return Facts(**(base | kw))

    assert check(f(current=None), SETTINGS) == Failure("no_price", {"current": None, "avg90": 2000})
    assert check(f(avg90=0), SETTINGS) == Failure("no_price", {"current": 1000, "avg90": 0})
    assert check(f(sales_rank=100_001), SETTINGS) == Failure(
        "sales_rank", {"value": 100_001, "max": 100_000}
    )
    assert check(f(current=1700), SETTINGS) == Failure(
        "drop", {"value": 15.0, "min": 20.0, "current": 1700, "avg90": 2000}
    )
    assert check(f(current=1400), SETTINGS) is None  # profit 300: the limit itself passes
    assert check(f(current=1401), SETTINGS) == Failure(
        "profit", {"value": 299, "min": 300, "current": 1401, "avg90": 2000, "fee_percent": 15.0}
    )
    assert check(f(offers=11), SETTINGS) == Failure("offers", {"value": 11, "max": 10})
    assert check(f(offers=10), SETTINGS) is None
    assert check(f(offers=None), SETTINGS) is None


def test_facts_as_dict_adds_drop_and_profit() -> None:
    fa = Facts("A", "T", 1000, 2000, 5000, 4)
    assert fa.as_dict(15.0) == {
        "asin": "A",
        "title": "T",
        "current": 1000,
        "avg90": 2000,
        "sales_rank": 5000,
        "offers": 4,
        "price_type": 1,
        "drop_percent": 50.0,
        "profit": 700,
    }
    assert Facts("A", None, None, 2000, None, None).as_dict(15.0)["profit"] is None
    assert Facts("A", None, 1000, None, None, None).profit(15.0) is None


def test_facts_of_an_odd_product() -> None:
    bare = facts({"stats": {"current": row(i1=0, i3=0)}, "title": 7})
    assert bare.asin == "" and bare.title is None
    assert (bare.current, bare.sales_rank, bare.avg90, bare.offers) == (0, 0, None, None)
    titled = facts(stats_product(row(i1=5), row(i1=9), title="A book"))
    assert (titled.asin, titled.title, titled.current, titled.avg90) == (
        "B0TEST0001",
        "A book",
        5,
        9,
    )
    # A row one slot too short for the index: none.
    short = facts({"stats": {"current": [-1, 500], "avg90": [-1]}})
    assert (short.current, short.avg90) == (500, None)
    assert facts({"stats": {"current": "1234"}}).current is None


def test_facts_of_a_used_hunt_read_used_prices_and_used_offers() -> None:
    p = stats_product(row(i1=100, i2=80, i3=10, i11=5, i12=9), row(i1=200, i2=150))
    used = facts(p, PRICE_USED)
    assert (used.current, used.avg90, used.offers, used.price_type) == (80, 150, 9, PRICE_USED)
    new = facts(p)
    assert (new.current, new.avg90, new.offers, new.price_type) == (100, 200, 5, 1)


def test_offer_count_falls_back_to_the_live_offers_never_the_total() -> None:
    # totalOfferCount counts every condition: no count of new offers (issue 11).
    total = facts(stats_product(row(i1=1), stats={"totalOfferCount": 3}))
    assert total.offers is None
    live = facts(stats_product(row(i1=1), liveOffersOrder=[0, 1]))
    assert live.offers == 2
    assert facts(stats_product(row(i1=1), stats={"totalOfferCount": 0})).offers is None


# --- the cost model -------------------------------------------------------------------------


def test_the_initial_figure_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"^initial_per_product must be > 0$"):
        ProductCostModel(0)
    assert ProductCostModel(0.5).per_product == 0.5
    assert ProductCostModel(0.5).permit_per_product == 0.5  # no bound by default


def test_only_a_positive_number_is_taken_from_the_fleet() -> None:
    model = ProductCostModel(1.0)
    for junk in (True, 0, -2, "3", None, 0.0):
        model.consider(junk)
        assert model.per_product == 1.0, junk
    model.consider(0.5)
    assert model.per_product == 0.5  # the fleet's figure replaces the initial guess
    model2 = ProductCostModel(5.0)
    model2.consider(2)
    assert model2.per_product == 2.0 and isinstance(model2.per_product, float)


def test_a_call_teaches_even_at_zero_tokens_but_not_without_products() -> None:
    model = ProductCostModel(5.0)
    assert model.observe(0, 1)
    assert model.learned == 0.0
    assert not model.observe(10, 0)
    assert not model.observe(-1, 3)
    assert model.observe(3, 1)
    assert model.learned == 3.0


def test_fit_is_at_least_one_and_bounded_by_max_cost() -> None:
    model = ProductCostModel(12.0)
    assert model.fit(0, 0) == 1
    assert model.fit(5, 1) == 1
    assert model.fit(5, 24) == 2
    assert model.fit(5, 0) == 5  # max cost unknown: as wanted
    assert model.fit(500, 0) == 100
