"""Issue 12 in the ingest stage: a batch the storage interrupts after its peek keeps the
survivors (their peek was paid for) and commits them next, without peeking them again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from stages.stage_support import Clock, FakeKeepa, FakePermits, make_settings, product

from common.errors import StorageBlocked
from common.keepa import KeepaResponse
from common.storage import Storage
from workers.stages import build_stages

T0 = 1_700_000_000.0
D = 1


class BlockingPermits(FakePermits):
    """The permit client with a storage gate that refuses the ``block_at``-th permit."""

    def __init__(self, block_at: int) -> None:
        super().__init__()
        self.block_at = block_at
        self.asked = 0

    def call(self, cost: int, fn: Callable[[], KeepaResponse], **kw: Any) -> KeepaResponse:
        self.asked += 1
        if self.asked == self.block_at:
            raise StorageBlocked("disk_full", "1 results held; no permit asked")
        return super().call(cost, fn, **kw)


def test_survivors_of_an_interrupted_batch_are_committed_not_peeked_again(
    storage: Storage,
) -> None:
    good = [f"B{i:09d}" for i in range(5)]
    bad = [f"B{i:09d}" for i in range(20, 23)]  # unknown to Keepa: rejected by the peek
    keepa, permits, clock = FakeKeepa({a: product(a) for a in good}), BlockingPermits(2), Clock(T0)
    storage.add_candidates(D, [*good, *bad], source="test", now=T0)
    settings = make_settings(worker={"commit_batch": 2})
    (ingest,) = build_stages("ingest", settings, keepa, permits, storage, clock=clock)  # type: ignore[arg-type]

    with pytest.raises(StorageBlocked):
        ingest.run_once(T0)  # peeked; the first commit's permit refused
    assert len(keepa.product_calls) == 1
    assert storage.totals(T0)["rejections"] == 3
    assert ingest.urgency(T0) > 0  # the survivors come first

    assert ingest.run_once(T0 + 1) == 5
    peeks = [c for c in keepa.product_calls if c["history"] is False]
    assert len(peeks) == 1, "a survivor was peeked (bought) again"
    assert sorted(a for c in keepa.product_calls[1:] for a in c["asins"]) == sorted(good)
    t = storage.totals(T0)
    assert t["deals_live"] == 5 and t["candidates_waiting"] == 0 and t["candidates_claimed"] == 0
