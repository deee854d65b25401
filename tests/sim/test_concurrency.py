"""Many clients at once: every token decision atomic, latency holding no lock."""

from __future__ import annotations

import threading
from typing import Any

import requests
from support import wait_until

KEY = "test-key-0001"
THREADS = 12
REQUESTS_PER_THREAD = 8
START_TOKENS = 100
JOIN_TIMEOUT_S = 30.0


def test_concurrent_spending_is_atomic(make_sim):
    sim = make_sim(tokens=START_TOKENS)
    cheap = [sim.catalog.asin(i) for i in range(3)]
    offers_18 = sim.find(sim.with_offers(18)).asin  # 12 tokens with offers=20
    calls: list[tuple[str, dict[str, Any]]] = [
        ("/product", {"domain": 1, "asin": cheap[0]}),
        ("/product", {"domain": 1, "asin": ",".join(cheap)}),
        ("/product", {"domain": 1, "asin": offers_18, "offers": 20}),
        ("/deal", {"selection": '{"domainId": 1, "priceTypes": [1]}'}),
    ]
    results: list[tuple[int, dict[str, Any]]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            with requests.Session() as session:
                barrier.wait(timeout=JOIN_TIMEOUT_S)
                for i in range(REQUESTS_PER_THREAD):
                    path, params = calls[(n + i) % len(calls)]
                    resp = session.get(
                        sim.url + path, params={"key": KEY, **params}, timeout=JOIN_TIMEOUT_S
                    )
                    with lock:
                        results.append((resp.status_code, resp.json()))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT_S)
    assert not errors, errors
    assert len(results) == THREADS * REQUESTS_PER_THREAD

    statuses = {status for status, _ in results}
    assert statuses <= {200, 429}, statuses
    charged = [body["tokensConsumed"] for status, body in results if status == 200]
    refused = [body for status, body in results if status == 429]
    assert refused, "the test must spend more than the balance"
    assert all(body["tokensConsumed"] == 0 for body in refused)
    state = sim.state()
    # Total charged equals the sum of tokensConsumed returned.
    assert state["tokens_consumed"] == sum(charged)
    assert state["tokens_left"] == START_TOKENS - sum(charged)
    assert state["status_429"] == len(refused)
    # Each request ran on a positive balance: the lowest balance is at least 1 - max cost.
    assert state["min_tokens_left"] == state["tokens_left"]  # no refill: only ever down
    assert state["min_tokens_left"] >= 1 - max(charged)
    assert state["tokens_left"] <= 0  # it ran until the balance was used up


def test_only_one_request_gets_the_last_token(make_sim):
    """Rounds of simultaneous 12-token requests on a balance of 1: exactly one runs each
    round (a check and a deduction not done together would let several through)."""
    rounds = 5
    sim = make_sim(tokens=1)
    asin = sim.find(sim.with_offers(18)).asin
    barrier = threading.Barrier(THREADS + 1)
    statuses: list[list[int]] = [[] for _ in range(rounds)]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client() -> None:
        try:
            with requests.Session() as session:
                session.get(sim.url + "/token", params={"key": KEY}, timeout=10)  # connect
                for r in range(rounds):
                    barrier.wait(timeout=JOIN_TIMEOUT_S)  # the balance is set to 1
                    barrier.wait(timeout=JOIN_TIMEOUT_S)  # go
                    resp = session.get(
                        sim.url + "/product",
                        params={"key": KEY, "domain": 1, "asin": asin, "offers": 20},
                        timeout=JOIN_TIMEOUT_S,
                    )
                    with lock:
                        statuses[r].append(resp.status_code)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(THREADS)]
    for t in threads:
        t.start()
    try:
        for r in range(rounds):
            barrier.wait(timeout=JOIN_TIMEOUT_S)
            sim.admin("tokens", key=KEY, tokens=1).raise_for_status()
            barrier.wait(timeout=JOIN_TIMEOUT_S)
            wait_until(lambda r=r: len(statuses[r]) == THREADS, 20, message="a round")
    finally:
        barrier.abort()
        for t in threads:
            t.join(JOIN_TIMEOUT_S)
    assert not errors, errors
    for r in range(rounds):
        assert sorted(statuses[r]) == [200] + [429] * (THREADS - 1), statuses[r]
    assert sim.state()["tokens_consumed"] == 12 * rounds


def test_latency_holds_no_lock(make_sim):
    """A slow offer request (2-20 s on Keepa: 10-100 s at latency_scale=5) is charged when
    accepted; other requests on the same key are answered while it sleeps."""
    sim = make_sim(latency_scale=5.0)
    slow_asin = sim.find(sim.with_offers(18)).asin
    slow_result: list[int] = []

    def slow() -> None:
        resp = requests.get(
            sim.url + "/product",
            params={"key": KEY, "domain": 1, "asin": slow_asin, "offers": 20},
            timeout=JOIN_TIMEOUT_S,
        )
        slow_result.append(resp.status_code)

    thread = threading.Thread(target=slow)
    thread.start()
    try:
        # Charged at acceptance, before the latency is over.
        wait_until(lambda: sim.state()["tokens_consumed"] == 12, 10, message="the slow charge")
        assert thread.is_alive()
        assert sim.token().json()["tokensLeft"] == 1200 - 12
        fast = sim.product([sim.catalog.asin(0)])
        assert fast.status_code == 200
        assert thread.is_alive(), "the slow request should still be sleeping"
    finally:
        sim.server.stop()  # cuts the simulated latency short: the slow request is answered
        thread.join(JOIN_TIMEOUT_S)
    assert slow_result == [200]
