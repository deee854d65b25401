"""Prometheus metrics on broker.metrics_port: the figures follow a permit round trip."""

from __future__ import annotations

import errno
from collections.abc import Callable

import requests
from broker_net.net_support import FakeKeepa, broker_settings
from doubles import Peer
from prometheus_client.parser import text_string_to_metric_families
from support import BindRace, retry_bind_race, unused_port, wait_until

from broker.server import Broker
from common import protocol


def scrape(port: int) -> dict[str, float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def test_metrics_follow_a_round_trip(
    serve: Callable[..., Broker], peers: Callable[..., Peer], fake_keepa: FakeKeepa
) -> None:
    def start() -> Broker:
        # broker.metrics_port cannot be 0 (0 is off): a chosen port, started again if taken.
        try:
            return serve(broker_settings(broker__metrics_port=unused_port()))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise BindRace(str(exc)) from exc
            raise

    broker = retry_bind_race(start)
    assert broker.metrics is not None
    port = broker.metrics.port
    peer = peers(broker.address)
    peer.hello("w1")
    peer.send(protocol.Request(seq=1, cost=12))
    grant = peer.expect(protocol.Grant)
    fake_keepa.tokens_left -= 9
    peer.send(protocol.Settle(grant.permit, "ok", fake_keepa.envelope(consumed=9).to_wire(), 200))
    peer.send_raw(b"junk")
    peer.expect(protocol.Error)

    def settled() -> dict[str, float] | None:
        m = scrape(port)
        return m if m.get("keepa_fleet_permits_settled_total") == 1 else None

    m = wait_until(settled, 15, message="the settle in the metrics")
    assert m["keepa_fleet_permits_granted_total"] == 1
    assert m["keepa_fleet_tokens_spent_total"] == 9
    assert m["keepa_fleet_tokens"] == fake_keepa.tokens_left
    assert m["keepa_fleet_tokens_in_flight"] == 0
    assert m["keepa_fleet_refill_rate"] == 20
    assert m["keepa_fleet_token_syncs_total"] >= 1
    assert m["keepa_fleet_keepa_429_total"] == 0
    assert m["keepa_fleet_grant_wait_seconds_count"] == 1
    assert m["keepa_fleet_workers{state=alive}"] == 1
    assert m["keepa_fleet_kills_total{reason=silent}"] == 0
    assert m["keepa_fleet_bad_messages_total{code=bad_msgpack}"] == 1
