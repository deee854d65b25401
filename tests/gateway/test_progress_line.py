"""``make run``'s progress line counts gateway clients apart from the workers."""

from __future__ import annotations

from typing import Any

from doubles import core_settings

from broker.core import BrokerCore
from common.run import progress_line


def full_state(**parts: Any) -> dict[str, Any]:
    """A whole STATUS_REPLY state (a real broker core's) with these parts replaced."""
    state = BrokerCore(core_settings(), send=lambda frames: True).status(0.0)
    state.update(parts)
    return state


def test_clients_are_not_counted_as_workers() -> None:
    state = {
        "workers": [
            {"id": "worker_00", "role": "all", "state": "alive"},
            {"id": "worker_01", "role": "all", "state": "alive"},
            {"id": "gateway/notebook", "role": "client", "state": "alive"},
        ],
        "clients": [{"id": "gateway/notebook"}],
    }
    line = progress_line(full_state(**state), 1.0)
    assert "workers 2/2 + 1 clients |" in line
    alone = progress_line(full_state(workers=state["workers"][:2]), 1.0)
    assert "workers 2/2 |" in alone and "clients" not in alone
