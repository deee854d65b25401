"""The worker registry with a fake clock: registration, silence, stalls, heartbeats due,
replacement by a new process, bounds."""

from __future__ import annotations

import pytest

from broker import states
from broker.registry import MAX_INFO_KEYS, Registry, bounded
from common import protocol
from common.errors import ProtocolError

H = 1.0
LIVENESS = 3
STALL_S = 10.0


def make(max_workers: int = 10) -> Registry:
    return Registry(
        heartbeat_s=H, liveness=LIVENESS, stall_s=STALL_S, max_workers=max_workers, this_host="me"
    )


def hello(
    worker_id: str = "w1", pid: int = 100, start: int = 5, host: str = "me"
) -> protocol.Hello:
    return protocol.Hello(worker_id, pid, host, start, "ingest", "0.1")


def never_queued(key: str) -> bool:
    return False


def test_hello_registers_and_finds_by_identity_and_key() -> None:
    reg = make()
    rec, replaced = reg.hello(b"id1", hello(), now=0.0)
    assert replaced is None
    assert reg.by_identity(b"id1") is rec
    assert reg.by_key(rec.key) is rec
    assert rec.state == states.ALIVE and rec.same_host
    other, _ = reg.hello(b"id2", hello("w2", host="elsewhere"), now=0.0)
    assert not other.same_host
    assert reg.live_count() == 2


def test_silent_after_liveness_heartbeats() -> None:
    reg = make()
    rec, _ = reg.hello(b"id1", hello(), now=0.0)
    assert reg.check(LIVENESS * H - 0.01, never_queued) == []
    assert reg.check(LIVENESS * H, never_queued) == [(rec, states.KILL_SILENT)]
    assert rec.state == states.SILENT
    # Reported once, not on every check.
    assert reg.check(LIVENESS * H + 5, never_queued) == []


def test_heartbeats_keep_a_worker_alive() -> None:
    reg = make()
    rec, _ = reg.hello(b"id1", hello(), now=0.0)
    t = 0.0
    for i in range(20):
        t += H
        reg.heartbeat(rec, protocol.Heartbeat(progress=i), t)
        assert reg.check(t + 0.5, never_queued) == []
    assert rec.state == states.ALIVE


def test_frozen_progress_while_not_waiting_is_a_stall() -> None:
    reg = make()
    rec, _ = reg.hello(b"id1", hello(), now=0.0)
    t = 0.0
    found = []
    while t < STALL_S + 2 and not found:
        t += H
        reg.heartbeat(rec, protocol.Heartbeat(progress=7), t)
        found = reg.check(t, never_queued)
    assert found == [(rec, states.KILL_STALLED)]
    assert STALL_S <= t <= STALL_S + H + 1  # progress changed once, at the first heartbeat


def test_waiting_on_the_broker_is_not_a_stall() -> None:
    reg = make()
    rec, _ = reg.hello(b"id1", hello(), now=0.0)
    for t in range(1, 40):
        reg.heartbeat(rec, protocol.Heartbeat(progress=1, waiting=True), float(t))
        assert reg.check(float(t), never_queued) == []
    # A queued request counts as waiting too, even if the heartbeat says otherwise.
    for t in range(40, 80):
        reg.heartbeat(rec, protocol.Heartbeat(progress=1, waiting=False), float(t))
        assert reg.check(float(t), lambda key: True) == []
    assert rec.state == states.WAITING
    # Waiting ended after t=79: the stall clock starts from there.
    for t in range(80, 79 + int(STALL_S)):
        reg.heartbeat(rec, protocol.Heartbeat(progress=1), float(t))
        assert reg.check(float(t), never_queued) == []
    reg.heartbeat(rec, protocol.Heartbeat(progress=1), 79 + STALL_S)
    assert reg.check(79 + STALL_S, never_queued) == [(rec, states.KILL_STALLED)]


def test_heartbeats_due_only_to_workers_not_sent_to_recently() -> None:
    reg = make()
    a, _ = reg.hello(b"a", hello("a"), now=0.0)
    b, _ = reg.hello(b"b", hello("b"), now=0.0)
    reg.sent_to(b, 0.8)
    assert reg.heartbeats_due(1.0) == [a]
    assert reg.next_deadline() == pytest.approx(1.0)
    reg.sent_to(a, 1.0)
    # A send only moves a timer later: the kept answer errs early until the next scan.
    assert reg.next_deadline() == pytest.approx(1.0)
    assert reg.scan_due(1.0)
    assert reg.next_deadline() == pytest.approx(1.8)


def test_deadlines_never_closer_than_the_next_scan_and_a_hello_renews_them() -> None:
    reg = make()
    assert reg.next_deadline() is None
    a, _ = reg.hello(b"a", hello("a"), now=0.0)
    assert reg.next_deadline() == pytest.approx(H)  # its first heartbeat to send
    assert reg.scan_due(0.99)
    assert not reg.scan_due(1.0)  # scans at most every scan_every_s
    assert reg.next_deadline() == pytest.approx(0.99 + reg.scan_every_s)
    reg.sent_to(a, 1.0)
    reg.heard_from(a, 1.0)
    reg.hello(b"b", hello("b"), now=0.5)  # (an earlier clock reading, on purpose)
    assert reg.next_deadline() == pytest.approx(1.5)  # b's timer, seen without a scan


def test_a_new_process_with_the_same_id_replaces_the_old_registration() -> None:
    reg = make()
    old, _ = reg.hello(b"id1", hello(pid=100), now=0.0)
    new, replaced = reg.hello(b"id2", hello(pid=200), now=1.0)
    assert replaced is old and old.state == states.GONE
    assert new.key != old.key
    assert reg.by_identity(b"id1") is None
    assert reg.by_identity(b"id2") is new
    assert [r.pid for r in reg.records()] == [200, 100]


def test_the_same_process_reconnecting_keeps_its_record() -> None:
    reg = make()
    rec, _ = reg.hello(b"id1", hello(), now=0.0)
    reg.heartbeat(rec, protocol.Heartbeat(progress=9), 1.0)
    again, replaced = reg.hello(b"id-new-socket", hello(), now=2.0)
    assert again is rec and replaced is None
    assert rec.progress == 9
    assert reg.by_identity(b"id1") is None
    assert reg.by_identity(b"id-new-socket") is rec


def test_max_workers_is_a_clear_refusal() -> None:
    reg = make(max_workers=2)
    reg.hello(b"a", hello("a"), 0.0)
    reg.hello(b"b", hello("b"), 0.0)
    with pytest.raises(ProtocolError) as err:
        reg.hello(b"c", hello("c"), 0.0)
    assert err.value.code == "too_many_workers"
    # A worker leaving makes room.
    rec = reg.by_identity(b"a")
    assert rec is not None
    reg.bye(rec, 1.0, "done")
    reg.hello(b"c", hello("c"), 1.0)


@pytest.mark.parametrize(
    "bad",
    [
        hello(worker_id=""),
        hello(worker_id="x" * 500),
        hello(pid=0),
        hello(pid=-5),
        hello(start=-1),
        hello(worker_id="a\nb"),
    ],
)
def test_nonsense_hello_is_refused(bad: protocol.Hello) -> None:
    with pytest.raises(ProtocolError) as err:
        make().hello(b"x", bad, 0.0)
    assert err.value.code == "bad_hello"


def test_gone_records_are_bounded_and_purged() -> None:
    reg = make(max_workers=1000)
    for i in range(300):
        rec, _ = reg.hello(b"i%d" % i, hello(f"w{i}"), 0.0)
        reg.bye(rec, 0.0, "done")
    assert len(reg.records()) <= 100
    reg.purge(10_000.0)
    assert reg.records() == []


def test_info_is_bounded() -> None:
    huge = {f"k{i}": "v" * 10_000 for i in range(1000)}
    deep: dict = {}
    cur = deep
    for _ in range(50):
        cur["d"] = {}
        cur = cur["d"]
    out = bounded({"huge": huge, "deep": deep, "list": list(range(10_000)), "b": b"\x00\x01"})
    assert len(out["huge"]) == MAX_INFO_KEYS + 1
    assert all(len(v) <= 256 for v in out["huge"].values())
    assert len(out["list"]) <= 64
    assert out["b"] == "0001"
    text = repr(out["deep"])
    assert text.count("{") <= 5


def test_an_oversized_info_is_not_kept() -> None:
    reg = make()
    rec, _ = reg.hello(b"id1", hello(), now=0.0)
    reg.heartbeat(rec, protocol.Heartbeat(info={"pipeline": {"deals_live": 3}}), 1.0)
    assert rec.info == {"pipeline": {"deals_live": 3}}
    wide = {f"k{i}": {f"j{j}": "v" * 200 for j in range(60)} for i in range(60)}
    reg.heartbeat(rec, protocol.Heartbeat(info=wide), 2.0)
    assert "pipeline" not in rec.info and "dropped" in rec.info
