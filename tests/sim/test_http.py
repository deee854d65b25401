"""HTTP behaviour: gzip, trailing slashes, every error status with its envelope, injected
faults, and the admin API."""

from __future__ import annotations

import gzip
import http.client
import json

import pytest
import requests

KEY = "test-key-0001"


def raw_get(sim, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", sim.server.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# --- encoding and paths -----------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        f"/token?key={KEY}",
        f"/product?key={KEY}&domain=1&asin=B0VC67WFCO,B0SLPMCODN&stats=90",
        f"/product?key={KEY}&domain=1&asin=B0VC67WFCO&offers=5",  # an error is gzipped too
    ],
)
def test_gzip_when_accepted(sim, path):
    status, headers, body = raw_get(sim, path, {"Accept-Encoding": "gzip, deflate"})
    assert headers.get("content-encoding") == "gzip"
    assert body[:2] == b"\x1f\x8b"
    assert int(headers["content-length"]) == len(body)
    payload = json.loads(gzip.decompress(body))
    assert "tokensLeft" in payload
    status2, headers2, body2 = raw_get(sim, path)
    assert status2 == status
    assert "content-encoding" not in headers2
    assert "tokensLeft" in json.loads(body2)


def test_paths_with_and_without_trailing_slash(sim):
    asin = sim.catalog.asin(0)
    for path in ("/token", "/token/"):
        assert sim.get(path).status_code == 200
    for path in ("/product", "/product/"):
        assert sim.get(path, domain=1, asin=asin).json()["tokensConsumed"] == 1
    for path in ("/deal", "/deal/"):
        resp = sim.get(path, selection=json.dumps(sim.NEWEST_FIRST))
        assert resp.json()["tokensConsumed"] == 5
    assert sim.session.get(f"{sim.url}/_sim/state/", params={"key": KEY}).status_code == 200


# --- errors -----------------------------------------------------------------------------


def assert_envelope(sim, resp, status: int, error_type: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    for field in sim.ENVELOPE_FIELDS:
        assert field in body, field
    assert body["tokensConsumed"] == 0
    if status == 429:  # recorded: the envelope alone
        assert "error" not in body, body
    else:
        assert body["error"]["type"] == error_type
        assert set(body["error"]) == {"type", "message", "details"}  # Keepa's error body
    return body


def test_400_for_a_missing_or_malformed_key(sim):
    asin = sim.catalog.asin(0)
    for key in ("short", "bad key with spaces", "x" * 129, ""):
        resp = sim.session.get(f"{sim.url}/product", params={"key": key, "domain": 1, "asin": asin})
        assert_envelope(sim, resp, 400, "REQUEST_REJECTED")
    resp = sim.session.get(f"{sim.url}/token")
    assert_envelope(sim, resp, 400, "REQUEST_REJECTED")


def test_402_for_unpaid_keys(sim):
    for path in ("/token", "/product"):
        resp = sim.get(path, key="unpaid-key-1", domain=1, asin=sim.catalog.asin(0))
        body = assert_envelope(sim, resp, 402, "PAYMENT_REQUIRED")
        assert body["tokensLeft"] == 0
    assert sim.state("unpaid-key-1")["statuses"] == {"402": 2}


def test_405_for_an_out_of_range_parameter(sim):
    resp = sim.product([sim.catalog.asin(0)], offers=101)
    body = assert_envelope(sim, resp, 405, "METHOD_NOT_ALLOWED")
    assert body["tokensLeft"] == 1200


def test_429(make_sim):
    sim = make_sim(tokens=0)
    body = assert_envelope(sim, sim.product([sim.catalog.asin(0)]), 429, "NOT_ENOUGH_TOKEN")
    assert body["refillRate"] == 20


def test_404_for_an_unknown_endpoint(sim):
    resp = sim.get("/query")
    assert_envelope(sim, resp, 404, "NOT_FOUND")


# --- faults -----------------------------------------------------------------------------


def fault(sim, **params) -> None:
    resp = sim.admin("fault", **params)
    assert resp.status_code == 200, resp.text


def test_fault_500_is_not_charged(sim):
    asin = sim.catalog.asin(0)
    fault(sim, kind="500", count=2)
    for _ in range(2):
        body = assert_envelope(sim, sim.product([asin]), 500, "INTERNAL_SERVER_ERROR")
        assert body["tokensLeft"] == 1200
    assert sim.product([asin]).status_code == 200  # only the next 2
    state = sim.state()
    assert state["tokens_consumed"] == 1
    assert state["statuses"] == {"200": 1, "500": 2}
    assert state["faults_pending"] == []


def test_fault_delay_is_executed_and_charged(sim):
    fault(sim, kind="delay", count=1, delay_s=0.3, path="/product/")
    assert sim.token().json()["processingTimeInMs"] < 300  # another path: not delayed
    body = sim.product([sim.catalog.asin(0)]).json()
    assert body["tokensConsumed"] == 1
    assert body["processingTimeInMs"] >= 300
    assert sim.state()["tokens_consumed"] == 1


def test_fault_malformed_is_executed_and_charged(sim):
    fault(sim, kind="malformed", path="/product")
    resp = sim.product([sim.catalog.asin(0)])
    assert resp.status_code == 200
    with pytest.raises(ValueError):
        json.loads(resp.text)
    assert resp.text.startswith("{")
    assert sim.state()["tokens_consumed"] == 1


def test_fault_drop_is_executed_and_charged(sim):
    fault(sim, kind="drop", path="/deal")
    with pytest.raises(requests.ConnectionError):
        sim.deal()
    assert sim.state()["tokens_consumed"] == 5
    assert sim.deal().status_code == 200


def test_faults_skip_admin_and_rejected_keys(sim):
    fault(sim, kind="500", count=1)
    assert sim.state()["faults_pending"][0]["remaining"] == 1  # admin: not taken
    assert sim.token(key="bad").status_code == 400  # no account: not taken
    assert sim.token().status_code == 500
    assert sim.token().status_code == 200


@pytest.mark.parametrize(
    "params",
    [
        {"kind": "explode"},
        {"kind": "500", "count": 0},
        {"kind": "delay", "delay_s": "soon"},
        {"kind": "delay", "delay_s": -1},
        {"kind": "drop", "path": "/nowhere"},
    ],
)
def test_bad_fault_requests(sim, params):
    assert sim.admin("fault", **params).status_code == 400


# --- admin ------------------------------------------------------------------------------


def test_catalog_listing(sim):
    first = sim.session.get(f"{sim.url}/_sim/catalog", params={"limit": 20}).json()
    assert len(first["asins"]) == 20
    assert first["total"] >= 20_000
    second = sim.session.get(f"{sim.url}/_sim/catalog", params={"offset": 10, "limit": 10}).json()
    assert second["asins"] == first["asins"][10:]
    found = sim.product(first["asins"]).json()["products"]
    assert [p["asin"] for p in found] == first["asins"]
    tail = sim.session.get(
        f"{sim.url}/_sim/catalog", params={"offset": first["total"] - 5, "limit": 100}
    ).json()
    assert len(tail["asins"]) == 5
    assert sim.session.get(f"{sim.url}/_sim/catalog", params={"limit": -1}).status_code == 400


def test_state_fields(sim):
    sim.token()
    state = sim.state()
    for field in (
        "tokens_left",
        "tokens_consumed",
        "requests",
        "status_429",
        "refill_rate",
        "refill_period_s",
        "cap",
        "min_tokens_left",
        "token_calls",
        "product_calls",
        "deal_calls",
        "external_consumed",
        "refill_to_first_request_ms",
    ):
        assert field in state, field


def test_admin_errors(sim):
    assert sim.session.get(f"{sim.url}/_sim/state").status_code == 400  # no key
    assert sim.session.get(f"{sim.url}/_sim/nothing").status_code == 404
    assert sim.session.get(f"{sim.url}/_sim/tokens", params={"key": KEY}).status_code == 405
    assert sim.admin("tokens", key=KEY).status_code == 400  # no tokens
    assert sim.admin("consume", key="bad", tokens=1).status_code == 400
