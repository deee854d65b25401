"""A broker with ``broker.curve_dir``: the status tool with the keys gets an answer, a peer
without them gets nothing (and the broker keeps serving)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from broker_net.net_support import broker_settings

from broker.server import Broker
from broker.status_cli import fetch_status
from common.curve import CLIENT_NAME, create_keys


def test_curve_broker_answers_only_key_holders(
    serve: Callable[..., Broker], tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    create_keys(keys, [CLIENT_NAME])
    (keys / f"{CLIENT_NAME}.key_secret").write_bytes(
        (keys / "clients" / f"{CLIENT_NAME}.key_secret").read_bytes()
    )
    broker = serve(broker_settings(broker__curve_dir=str(keys)), synced=False)
    assert fetch_status(broker.address, timeout=1.0) is None  # no keys: no answer
    state = fetch_status(broker.address, timeout=10.0, curve_dir=str(keys))
    assert state is not None and state["broker_id"] == broker.broker_id
