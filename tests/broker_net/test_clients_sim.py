"""Eight client processes share one simulated Keepa account through a broker thread: each
REQUEST -> GRANT -> real ``/product`` call (offers=20) -> SETTLE. The simulator records zero
429s, its balance never goes below zero, and the tokens it says were consumed equal the
broker's settled spend (and the clients' own sum)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker_net.net_support import broker_settings, status
from support import Processes, wait_until

from broker.server import Broker
from common.config import SIM_DEMO_KEY, BrokerSettings
from sim.server import SimServer

CLIENT = str(Path(__file__).with_name("client.py"))
CLIENTS = 8
REQUESTS_EACH = 5
ASINS_PER_CALL = 4
REFILL_PERIOD_S = 0.1
REFILL_RATE = 20  # 200 tokens/s: well below what eight clients want


def last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    raise AssertionError(f"no JSON summary in:\n{text}")


def test_eight_clients_spend_only_through_permits(
    serve: Callable[..., Broker], processes: Processes
) -> None:

    with SimServer(
        port=0,
        refill_rate=REFILL_RATE,
        refill_period_s=REFILL_PERIOD_S,
        tokens=50,  # far less than the clients want: they must wait for refills
        seed=1,
        latency_scale=0.0,
    ) as sim:
        settings = broker_settings(
            keepa__base_url=sim.url,
            keepa__refill_period_s=REFILL_PERIOD_S,
            broker__sync_min_interval_s=0.05,
            broker__short_wait_s=0.5,
        )
        broker = serve(settings, keepa_client=None)  # the real KeepaClient against the sim
        procs = {}
        for i in range(CLIENTS):
            name = f"client{i}"
            argv = [
                sys.executable,
                CLIENT,
                "--broker",
                broker.address,
                "--id",
                name,
                "--sim",
                sim.url,
                "--key",
                SIM_DEMO_KEY,
                "--requests",
                str(REQUESTS_EACH),
                "--asins-per-call",
                str(ASINS_PER_CALL),
                "--catalog-offset",
                str(i * REQUESTS_EACH * ASINS_PER_CALL),
            ]
            procs[name] = processes.start(name, argv)
        for name, proc in procs.items():
            assert proc.wait(timeout=90) == 0, processes.log(name)
        summaries = [last_json(processes.log(name)) for name in procs]
        assert all(s["grants"] == REQUESTS_EACH for s in summaries), summaries
        assert all(s["status_429"] == 0 for s in summaries), summaries
        clients_consumed = sum(s["tokens_consumed"] for s in summaries)

        sim_state = sim.state(SIM_DEMO_KEY)
        assert sim_state["status_429"] == 0
        assert sim_state["product_calls"] == CLIENTS * REQUESTS_EACH
        assert sim_state["min_tokens_left"] >= -BrokerSettings().max_deficit
        assert sim_state["tokens_consumed"] == clients_consumed > 0
        state = wait_until(
            lambda: (lambda s: s if s["permits"]["settled"] == CLIENTS * REQUESTS_EACH else None)(
                status(broker.address)
            ),
            20,
            message="every permit settled",
        )
        assert state["tokens"]["spent"] == sim_state["tokens_consumed"]
        assert state["permits"]["granted"] == CLIENTS * REQUESTS_EACH
        assert state["permits"]["expired"] == 0
        assert state["keepa"]["status_429"] == 0
        assert sum(w["tokens_spent"] for w in state["workers"]) == clients_consumed
        assert state["keepa"]["token_syncs"] >= 1
        assert state["permits"]["mean_wait_s"] > 0  # requests did wait for refills
