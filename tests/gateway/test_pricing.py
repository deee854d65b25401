"""The gateway prices calls from the workers' cost model (one source, ``common.costs``) and
reaches the workers' code only through the link it is built on."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from common.costs import (
    DEAL_PAGE_COST,
    LIGHT_COST_PER_PRODUCT,
    ProductCostModel,
    offers_bound_per_product,
)
from gateway import pricing

GATEWAY = Path(pricing.__file__).resolve().parent
# The broker link (HELLO, heartbeats, reconnects) and how a failed call is settled: the
# workers' permit client, which the gateway's client link is built on. Nothing else.
ALLOWED_FROM_WORKERS = {"workers.link", "workers.permit_client"}


@pytest.mark.parametrize("offers", [None, 20, 40, 100])
@pytest.mark.parametrize("n", [1, 2, 7, 20, 99, 100])
def test_a_product_call_costs_what_the_workers_would_ask_for(offers, n) -> None:
    params = {"domain": "1", "asin": ",".join(f"B0{i:08d}" for i in range(n))}
    if offers is not None:
        params["offers"] = str(offers)
    bound = offers_bound_per_product(offers) if offers else LIGHT_COST_PER_PRODUCT
    workers = ProductCostModel(LIGHT_COST_PER_PRODUCT, bound_per_product=bound).estimate(n)
    assert pricing.price("GET", "/product", params).cost == workers


def test_a_deal_page_costs_what_the_workers_ask_for() -> None:
    assert pricing.price("GET", "/deal", {"selection": "{}"}).cost == DEAL_PAGE_COST
    assert pricing.price("POST", "/deal/", {}).cost == DEAL_PAGE_COST


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_the_gateway_imports_no_workers_internals() -> None:
    used = {m for p in GATEWAY.glob("*.py") for m in _imports(p) if m.split(".")[0] == "workers"}
    assert used <= ALLOWED_FROM_WORKERS, used - ALLOWED_FROM_WORKERS
    assert "common.costs" in _imports(GATEWAY / "pricing.py")
