"""The unmodified keepa package in N processes beside fleet workers on one simulated account
(``bench.gateway_mix.run_mix``, small and short): through the gateway nothing escapes the
broker; straight at the simulator, the same processes spend what the broker never settles."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench.gateway_mix import MixSpec, run_mix

SPEC = MixSpec(
    mode="gateway",
    users=2,
    workers=2,
    worker_asins=16,
    user_asins=16,
    batch=4,
    refill_rate=50,
    refill_period_s=0.5,
    initial_tokens=50,
    time_limit_s=60.0,
)


@pytest.mark.e2e
def test_keepa_processes_through_the_gateway_beside_workers(tmp_path: Path) -> None:
    out = run_mix(SPEC, tmp_path, "gateway")
    assert out["workers_finished"] and out["users_finished"], out
    assert out["user_items"] == out["user_backlog"] and out["user_errors"] == 0
    assert out["worker_items"] == out["worker_backlog"]
    # The account had to be shared: more was spent than it held at GO.
    assert out["sim_consumed"] > out["balance_at_go"], out
    assert out["sim_429"] == 0 and out["user_429"] == 0 and out["worker_429"] == 0
    assert out["unaccounted"] == 0 and out["in_flight"] == 0
    assert out["sim_consumed"] == out["fleet_settled"]
    assert out["spent_clients"] == sum(c["tokens_spent"] for c in out["clients"]) > 0
    assert sorted(c["id"] for c in out["clients"]) == ["gateway/user0", "gateway/user1"]
    assert all(c["permits_held"] == 0 and c["waiting"] == 0 for c in out["clients"])


@pytest.mark.e2e
def test_the_same_processes_straight_at_the_simulator_escape_the_broker(tmp_path: Path) -> None:
    # The keepa package sleeps |tokensLeft| / refillRate x 60 s after a 429: the run ends
    # once the workers are done and every such sleep goes past the limit.
    out = run_mix(dataclasses.replace(SPEC, mode="direct", time_limit_s=15.0), tmp_path, "direct")
    assert out["workers_finished"], out
    assert out["clients"] == [] and out["spent_clients"] == 0
    # What the keepa processes spent never reached the broker as a settle.
    assert out["sim_consumed"] > out["fleet_settled"] == out["spent_workers"], out
    assert out["user_items"] > 0
