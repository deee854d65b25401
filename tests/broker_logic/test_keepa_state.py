"""The broker's Keepa key states (``broker.keepa_state``) and the fleet's health
(``broker.health``) on a fake clock; the permit book closed with a reason naming the state."""

from __future__ import annotations

import logging

import pytest
from broker_logic.fakes import obs

from broker import keepa_state as ks
from broker.health import FleetHealth
from broker.keepa_state import KeepaState
from broker.ledger import Ledger
from broker.permits import PermitBook
from broker.status_cli import format_status
from common.health_view import health_line, health_lines, problems_of


def test_402_on_token_is_no_access_until_token_answers_again() -> None:
    k = KeepaState(recheck_max_s=60)
    assert k.on_token(0.0, 402, "HTTP 402") == ks.KEY_NO_ACCESS
    assert k.reject_reason == "keepa_no_access"
    assert not k.recheck_due(0.5)
    assert k.recheck_due(1.0)
    assert k.on_token(1.0, None, "") == ks.OK
    assert k.ok and k.reject_reason == "" and k.next_recheck_at() is None


def test_400_on_token_is_key_invalid_and_a_failure_is_unreachable() -> None:
    k = KeepaState()
    assert k.on_token(0.0, 400, "HTTP 400") == ks.KEY_INVALID
    assert k.on_token(1.0, None, "no answer") == ks.KEEPA_UNREACHABLE
    assert k.on_token(2.0, 503, "HTTP 503") is None  # the same state
    assert k.state == ks.KEEPA_UNREACHABLE
    assert k.on_token(3.0, 405, "HTTP 405") == ks.OK  # Keepa answered


def test_rechecks_back_off_to_the_cap_and_never_stop() -> None:
    k = KeepaState(recheck_max_s=60)
    now = 0.0
    k.on_token(now, 402, "HTTP 402")
    waits = []
    for _ in range(12):
        at = k.next_recheck_at()
        assert at is not None
        waits.append(at - now)
        now = at
        assert k.recheck_due(now)
        k.on_token(now, 402, "HTTP 402")
    assert waits[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(waits) == 60.0 and waits[-1] == 60.0  # once a minute once old, still asking


def test_a_settle_402_closes_and_a_late_ok_settle_only_brings_the_recheck_forward() -> None:
    k = KeepaState(recheck_max_s=60)
    assert k.on_call(0.0, 402, "http_error") == ks.KEY_NO_ACCESS
    assert k.on_call(0.1, None, "ok") is None  # sent before the key lost access
    assert k.state == ks.KEY_NO_ACCESS and k.recheck_due(0.1)


def test_refill_rate_zero_means_no_access() -> None:
    k = KeepaState()
    assert k.on_call(0.0, None, "ok", refill_rate=0) == ks.KEY_NO_ACCESS
    assert k.on_token(1.0, None, "", refill_rate=0) is None
    assert k.state == ks.KEY_NO_ACCESS
    assert k.on_token(2.0, None, "", refill_rate=80) == ks.OK


def test_calls_failing_in_a_row_make_keepa_unreachable_and_one_ok_ends_it() -> None:
    k = KeepaState()
    assert k.on_call(0.0, 500, "http_error") is None
    assert k.on_call(0.1, 400, "http_error") is None  # Keepa answered: the run is broken
    assert k.on_call(0.2, 503, "http_error") is None
    assert k.on_call(0.3, None, "timeout") == ks.KEEPA_UNREACHABLE
    assert k.on_call(0.4, None, "not_sent") is None
    assert k.on_call(0.5, None, "ok") == ks.OK


def test_recheck_max_must_be_positive() -> None:
    with pytest.raises(ValueError, match="recheck_max_s"):
        KeepaState(recheck_max_s=0)


def test_the_permit_book_closed_rejects_with_the_state_not_too_large() -> None:
    led = Ledger()
    led.observe(obs(0.0, 500, rate=80), 0.0)
    book = PermitBook(led, id_prefix="u")
    book.set_closed("keepa_no_access")
    d = book.submit("w", 1, 60 * 80 + 1, 0, 30, 0.0)  # too large too: the state wins
    assert d is not None and (d.kind, d.reason) == ("reject", "keepa_no_access")
    book.set_closed("")
    assert book.submit("w", 2, 600, 0, 30, 0.0) is None  # open: queued for the refill
    book.set_closed("keepa_no_access")
    (queued,) = book.schedule(0.1)
    assert (queued.kind, queued.reason, queued.seq) == ("reject", "keepa_no_access", 2)
    assert book.stats(0.1)["rejected_by_reason"] == {"keepa_no_access": 2}


def test_while_keepa_is_unreachable_requests_are_held_not_granted_nor_rejected() -> None:
    led = Ledger()
    led.observe(obs(0.0, 500, rate=80), 0.0)
    book = PermitBook(led, id_prefix="u")
    book.set_closed("keepa_unreachable")
    assert book.submit("w", 1, 10, 0, 30, 0.0) is None  # held, though tokens allow it
    assert book.schedule(1.0) == []
    assert book.next_wakeup(1.0) == 30.0  # its deadline, not "now": no busy loop
    book.set_closed("")
    (granted,) = book.schedule(2.0)
    assert (granted.kind, granted.seq) == ("grant", 1)


def test_health_says_each_edge_once_and_status_opens_with_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="broker.health")
    h = FleetHealth(recheck_max_s=60)
    assert h.status(0.0) == {"ok": True, "keepa": "ok", "problems": []}
    for i in range(30):
        assert h.on_token(float(i), 402, "HTTP 402") == "keepa_no_access"
    h.worker_storage("w0", {"problem": "disk_full", "since_s": 2.0, "held": 3}, 10.0)
    h.worker_storage("w0", {"problem": "disk_full", "since_s": 3.0, "held": 3}, 11.0)
    state = {"health": h.status(12.0)}
    names = [p["problem"] for p in problems_of(state)]
    assert names == ["key_no_access", "storage_disk_full"]
    lines = health_lines(state)
    assert lines[0] == "health: 2 problems"
    assert "key has no access" in lines[1] and "since 12.0s ago" in lines[1]
    assert "worker w0: database disk full" in lines[2] and "3 results held" in lines[2]
    assert format_status(state).splitlines()[:3] == lines
    assert "key has no access" in health_line(state)
    h.worker_storage("w0", {}, 13.0)
    assert h.on_token(30.0, None, "") == ""
    text = [r.getMessage() for r in caplog.records]
    assert sum("key_no_access began" in t for t in text) == 1, text
    assert sum("key_no_access ended" in t for t in text) == 1, text
    assert sum("w0 storage: disk_full began" in t for t in text) == 1, text
    assert sum("w0 storage: disk_full ended" in t for t in text) == 1, text
    assert health_lines({"health": h.status(31.0)}) == ["health: ok"]


def test_a_silent_workers_storage_report_goes_stale() -> None:
    h = FleetHealth()
    h.worker_storage("w0", {"problem": "read_only", "since_s": 0.0}, 0.0)
    assert problems_of({"health": h.status(1.0)})
    assert not problems_of({"health": h.status(100.0)})
