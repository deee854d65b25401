"""``make run``'s progress line counts gateway clients apart from the workers."""

from __future__ import annotations

from common.run import progress_line


def test_clients_are_not_counted_as_workers() -> None:
    state = {
        "workers": [
            {"id": "worker_00", "role": "all", "state": "alive"},
            {"id": "worker_01", "role": "all", "state": "alive"},
            {"id": "gateway/notebook", "role": "client", "state": "alive"},
        ],
        "clients": [{"id": "gateway/notebook"}],
    }
    line = progress_line(state, 1.0)
    assert "workers 2/2 + 1 clients |" in line
    assert "clients" not in progress_line({"workers": state["workers"][:2]}, 1.0)
