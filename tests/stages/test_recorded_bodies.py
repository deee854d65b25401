"""Bodies recorded from the live Keepa API (tests/fixtures/keepa-real/, origin table in its
README.md) parse through the client's envelope and the stages: every recorded product is judged
with a named reason."""

from __future__ import annotations

import json
from pathlib import Path

from common.config import FilterSettings
from common.keepa import KeepaResponse, TokenEnvelope
from workers.stages import judge

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "keepa-real"


def response(body: dict) -> KeepaResponse:
    envelope = TokenEnvelope.from_json(body)
    assert envelope is not None
    return KeepaResponse(status=200, envelope=envelope, payload=body, elapsed_s=0.0)


def test_recorded_products_are_judged_with_a_named_reason() -> None:
    body = json.loads((FIXTURES / "product-keepacli-2.json").read_text())
    bare = json.loads((FIXTURES / "product-agentarbitrage-2.json").read_text())
    body = {**body, "products": [*body["products"], bare]}
    asins = [p["asin"] for p in body["products"]]
    passed, rejected = judge(asins, response(body), FilterSettings())
    assert len(passed) + len(rejected) == len(asins) == 2
    assert all(r.reason for r in rejected)


def test_an_invalid_product_is_not_found_and_a_variation_parent_its_own_reason() -> None:
    body = json.loads((FIXTURES / "token-agentarbitrage-1.json").read_text())
    body["products"] = [
        {"asin": "B000000001", "productType": 4, "csv": None},
        {"asin": "B000000002", "productType": 5, "csv": None},
    ]
    _, rejected = judge(["B000000001", "B000000002"], response(body), FilterSettings())
    assert [r.reason for r in rejected] == ["not_found", "variation_parent"]
