"""A broker core driven in process, without sockets or threads: ``BrokerCore.dispatch(frames,
now)`` and ``BrokerCore.housekeeping(now)`` (what ``loop_once`` does after its poll) on a clock the
test moves. Its ROUTER is a ``FakeRouter`` that records the replies (and fails a send when
told to), its /token thread a ``FakeSync`` that records requests (the test answers with
``Broker._on_sync_result``), and its signal function records instead of signalling."""

from __future__ import annotations

from typing import Any

from doubles import FakeRouter, FakeSync, core_settings

from broker.core import BrokerCore

THIS_HOST = "fuzz-host"


def make_broker(signals: list[tuple[int, int]], **overrides: Any) -> BrokerCore:
    """A broker for in-process driving; ``overrides`` are settings (``broker__max_workers``)."""
    router, sync = FakeRouter(), FakeSync()
    broker = BrokerCore(
        core_settings(**overrides),
        send=router.send,
        request_sync=sync.request,
        clock=lambda: 0.0,
        wall_clock=lambda: 1_700_000_000.0,
        signal_fn=lambda pid, sig: signals.append((pid, sig)),
        this_host=THIS_HOST,
    )
    broker._router = router  # type: ignore[attr-defined]
    broker._sync = sync  # type: ignore[attr-defined]
    return broker
