"""The registry's records in full, with a fake clock: what a HELLO is refused for (each
bound at its edge), what a record holds after each event and since when, the gone records'
reasons, order and bounds, the timers' bookkeeping, and the bounding of info. Written
against the mutants that survived the first ``make mutate`` (docs/MUTATION.md)."""

from __future__ import annotations

import json

import pytest

from broker import states
from broker.registry import (
    GONE_KEEP_S,
    MAX_GONE_KEPT,
    MAX_HOST_CHARS,
    MAX_ID_CHARS,
    MAX_INFO_BYTES,
    MAX_INFO_ITEMS,
    MAX_INFO_KEYS,
    MAX_INFO_STR_CHARS,
    MAX_LABEL_CHARS,
    MAX_PID,
    Registry,
    bounded,
    check_hello,
)
from common import protocol
from common.errors import ProtocolError

H = 1.0


def make(max_workers: int = 10, heartbeat_s: float = H) -> Registry:
    return Registry(
        heartbeat_s=heartbeat_s, liveness=3, stall_s=10.0, max_workers=max_workers, this_host="me"
    )


def hello(
    worker_id: str = "w1",
    pid: int = 100,
    start: int = 5,
    host: str = "me",
    role: str = "ingest",
    version: str = "0.1",
) -> protocol.Hello:
    return protocol.Hello(worker_id, pid, host, start, role, version)


def hb(progress: int = 0, waiting: bool = False, **info: object) -> protocol.Heartbeat:
    return protocol.Heartbeat(
        progress=progress, waiting=waiting, stage="s", items_done=3, info=dict(info)
    )


def refused(msg: protocol.Hello) -> str:
    with pytest.raises(ProtocolError) as info:
        check_hello(msg)
    assert info.value.code == "bad_hello"
    return str(info.value)


# --- HELLO bounds, each at its edge -------------------------------------------------------


def test_hello_fields_are_accepted_up_to_each_bound() -> None:
    check_hello(hello(worker_id="w" * MAX_ID_CHARS, pid=MAX_PID, start=2**63 - 1))
    check_hello(hello(pid=1, start=0, host="h" * MAX_HOST_CHARS))
    check_hello(hello(role="r" * MAX_LABEL_CHARS, version="v" * MAX_LABEL_CHARS))


def test_hello_fields_are_refused_past_each_bound_with_what_is_wrong() -> None:
    assert "worker_id must be 1..128" in refused(hello(worker_id="w" * (MAX_ID_CHARS + 1)))
    assert refused(hello(worker_id="w\n")) == "bad_hello: worker_id has unprintable characters"
    assert "pid 0 out of range" in refused(hello(pid=0))
    assert f"pid {MAX_PID + 1} out of range" in refused(hello(pid=MAX_PID + 1))
    assert "start_time out of range" in refused(hello(start=-1))
    assert "start_time out of range" in refused(hello(start=2**63))
    assert "bad host" in refused(hello(host="h" * (MAX_HOST_CHARS + 1)))
    assert refused(hello(host="a\x00b")) == "bad_hello: bad host"
    assert "at most 64" in refused(hello(role="r" * (MAX_LABEL_CHARS + 1)))
    assert "at most 64" in refused(hello(version="v" * (MAX_LABEL_CHARS + 1)))
    both = refused(hello(pid=0, start=-1))
    assert both == "bad_hello: pid 0 out of range; start_time out of range"


# --- records ------------------------------------------------------------------------------


def test_a_new_registration_holds_what_the_hello_said() -> None:
    reg = make()
    rec, replaced = reg.hello(b"i1", hello(host="other", role="deals", version="9"), 7.0)
    assert replaced is None
    assert (rec.worker_id, rec.identity, rec.host, rec.pid, rec.start_time) == (
        "w1",
        b"i1",
        "other",
        100,
        5,
    )
    assert (rec.role, rec.version, rec.same_host) == ("deals", "9", False)
    assert (rec.registered_at, rec.last_seen, rec.last_sent, rec.progress_at) == (7, 7, 7, 7)
    assert (rec.state, rec.state_since) == (states.ALIVE, 7.0)
    assert rec.key == "w1@other:100:5"


def test_a_reconnect_of_the_same_process_keeps_its_record_under_the_new_identity() -> None:
    reg = make()
    rec, _ = reg.hello(b"i1", hello(), 1.0)
    reg.heartbeat(rec, hb(progress=4), 2.0)
    reg.check(2 + 3 * H, lambda key: False)  # silent at 5
    assert rec.state == states.SILENT
    again, replaced = reg.hello(b"i2", hello(), 9.0)
    assert again is rec and replaced is None
    assert rec.identity == b"i2" and rec.heartbeats == 1 and rec.progress == 4
    assert (rec.state, rec.state_since, rec.last_seen, rec.progress_at) == (states.ALIVE, 9, 9, 9)
    assert reg.by_identity(b"i1") is None and reg.by_identity(b"i2") is rec


def test_a_new_process_under_the_id_replaces_the_old_one() -> None:
    reg = make()
    old, _ = reg.hello(b"i1", hello(pid=100), 1.0)
    new, replaced = reg.hello(b"i2", hello(pid=200), 2.0)
    assert replaced is old and new is not old
    assert (old.state, old.state_since, old.gone_reason) == (
        states.GONE,
        2.0,
        "replaced by a new registration",
    )
    assert reg.by_key(old.key) is None and reg.by_key(new.key) is new
    assert reg.by_identity(b"i1") is None


def test_a_socket_speaking_for_another_id_ends_its_first_registration() -> None:
    reg = make()
    first, _ = reg.hello(b"i1", hello(worker_id="a"), 1.0)
    second, replaced = reg.hello(b"i1", hello(worker_id="b"), 2.0)
    assert replaced is None
    assert (first.state, first.state_since, first.gone_reason) == (
        states.GONE,
        2.0,
        "identity reused",
    )
    assert reg.by_identity(b"i1") is second
    assert [r.worker_id for r in reg.records()] == ["b", "a"]


def test_too_many_workers_says_how_many() -> None:
    reg = make(max_workers=1)
    reg.hello(b"i1", hello(worker_id="a"), 1.0)
    with pytest.raises(ProtocolError) as info:
        reg.hello(b"i2", hello(worker_id="b"), 1.0)
    assert info.value.code == "too_many_workers"
    assert "1 workers registered (broker.max_workers)" in str(info.value)


def test_a_heartbeat_updates_the_record() -> None:
    reg = make()
    rec, _ = reg.hello(b"i1", hello(), 1.0)
    reg.heartbeat(rec, hb(progress=2, deals=5), 2.0)
    reg.heartbeat(rec, hb(progress=2), 3.0)
    assert (rec.heartbeats, rec.last_seen, rec.progress, rec.progress_at) == (2, 3, 2, 2)
    assert (rec.stage, rec.items_done, rec.info) == ("s", 3, {"deals": 5})
    reg.heartbeat(rec, hb(progress=2, waiting=True), 4.0)
    assert rec.waiting is True and rec.progress_at == 4.0  # waiting is not a stall
    big = {str(i): "z" * 300 for i in range(MAX_INFO_KEYS)}  # 64 x 256 characters kept
    reg.heartbeat(rec, hb(progress=2, **big), 5.0)
    assert rec.info == {"dropped": f"info larger than {MAX_INFO_BYTES} bytes"}


def test_a_stalled_worker_is_alive_again_on_progress_only() -> None:
    reg = make()
    rec, _ = reg.hello(b"i1", hello(), 0.0)
    for t in range(1, 11):
        reg.heartbeat(rec, hb(progress=0), float(t))
    assert reg.check(10.0, lambda key: False) == [(rec, states.KILL_STALLED)]
    assert (rec.state, rec.state_since) == (states.STALLED, 10.0)
    reg.heartbeat(rec, hb(progress=0), 11.0)
    assert rec.state == states.STALLED
    reg.heartbeat(rec, hb(progress=1), 12.0)
    assert (rec.state, rec.state_since) == (states.ALIVE, 12.0)


def test_queued_and_unqueued_move_between_alive_and_waiting_with_the_time() -> None:
    reg = make()
    rec, _ = reg.hello(b"i1", hello(), 0.0)
    reg.set_queued(rec, True, 2.0)
    assert (rec.state, rec.state_since, rec.progress_at) == (states.WAITING, 2.0, 2.0)
    reg.set_queued(rec, True, 3.0)
    assert rec.state_since == 2.0 and rec.progress_at == 3.0
    reg.set_queued(rec, False, 4.0)
    assert (rec.state, rec.state_since) == (states.ALIVE, 4.0)
    reg.set_queued(rec, False, 5.0)
    assert (rec.state, rec.state_since) == (states.ALIVE, 4.0)


def test_silence_is_found_at_its_instant_and_stamped() -> None:
    reg = make()
    rec, _ = reg.hello(b"i1", hello(), 0.0)
    assert reg.check(2.999, lambda key: False) == []
    assert reg.check(3.0, lambda key: False) == [(rec, states.KILL_SILENT)]
    assert (rec.state, rec.state_since) == (states.SILENT, 3.0)
    assert reg.check(4.0, lambda key: False) == []  # found once


def test_check_asks_whether_each_worker_is_queued_by_its_key() -> None:
    reg = make()
    rec, _ = reg.hello(b"i1", hello(), 0.0)
    asked: list[str] = []
    reg.check(1.0, lambda key: asked.append(key) or True)
    assert asked == [rec.key] and rec.state == states.WAITING
    # Queued, it is never stalled however long it waits.
    for t in range(2, 30):
        reg.heartbeat(rec, hb(progress=0), float(t))
        assert reg.check(float(t), lambda key: True) == []


def test_a_client_is_never_stalled_but_a_later_worker_still_is() -> None:
    reg = make()
    client, _ = reg.hello(b"c", hello(worker_id="a-client", role=protocol.ROLE_CLIENT), 0.0)
    worker, _ = reg.hello(b"w", hello(worker_id="b-worker"), 0.0)
    for t in range(1, 11):
        reg.heartbeat(client, hb(progress=0), float(t))
        reg.heartbeat(worker, hb(progress=0), float(t))
    assert reg.check(10.0, lambda key: False) == [(worker, states.KILL_STALLED)]
    assert client.state == states.ALIVE


def test_bye_kill_and_gone_stamp_state_reason_and_time() -> None:
    reg = make()
    a, _ = reg.hello(b"a", hello(worker_id="a"), 0.0)
    b, _ = reg.hello(b"b", hello(worker_id="b"), 0.0)
    c, _ = reg.hello(b"c", hello(worker_id="c"), 0.0)
    reg.bye(a, 1.0, "sigterm")
    reg.bye(b, 2.0, "")
    assert (a.state, a.state_since, a.gone_reason) == (states.GONE, 1.0, "bye: sigterm")
    assert b.gone_reason == "bye"
    c.set_state(states.SILENT, 2.5)  # a kill follows silence or a stall (the lifecycle)
    reg.mark_killing(c, 3.0)
    assert (c.state, c.state_since) == (states.KILLING, 3.0)
    reg.mark_gone(c, 4.0, "killed")
    assert (c.state, c.state_since, c.gone_reason) == (states.GONE, 4.0, "killed")
    assert reg.live_count() == 0 and reg.by_key(c.key) is None
    assert [r.worker_id for r in reg.records()] == ["c", "b", "a"]  # newest gone first


def test_records_are_by_id_then_the_gone_and_counted_by_state() -> None:
    reg = make()
    for worker_id in ("c", "a", "b"):
        reg.hello(worker_id.encode(), hello(worker_id=worker_id), 0.0)
    gone, _ = reg.hello(b"x", hello(worker_id="x"), 0.0)
    reg.bye(gone, 1.0, "")
    reg.set_queued(reg.by_identity(b"b"), True, 1.0)  # type: ignore[arg-type]
    assert [r.worker_id for r in reg.records()] == ["a", "b", "c", "x"]
    counts = reg.counts_by_state()
    assert counts == {s: 0 for s in states.WORKER_STATES} | {"alive": 2, "waiting": 1, "gone": 1}


def test_gone_records_are_kept_for_their_time_and_bounded() -> None:
    reg = make(max_workers=1000)
    recs = [reg.hello(bytes([i]), hello(worker_id=f"w{i:03d}"), 0.0)[0] for i in range(3)]
    reg.bye(recs[0], 10.0, "")
    reg.bye(recs[1], 20.0, "")
    reg.purge(10.0 + GONE_KEEP_S - 0.001)
    assert len(reg.records()) == 3
    reg.purge(10.0 + GONE_KEEP_S)
    assert [r.worker_id for r in reg.records()] == ["w002", "w001"]
    for i in range(MAX_GONE_KEPT + 1):
        rec, _ = reg.hello(b"n%d" % i, hello(worker_id=f"n{i:03d}"), 30.0)
        reg.bye(rec, 30.0, "")
    gone = [r.worker_id for r in reg.records() if r.state == states.GONE]
    assert len(gone) == MAX_GONE_KEPT
    assert gone[0] == f"n{MAX_GONE_KEPT:03d}" and "w001" not in gone and "n000" not in gone
    reg.purge(30.0)
    assert len([r for r in reg.records() if r.state == states.GONE]) == MAX_GONE_KEPT


# --- timers -------------------------------------------------------------------------------


def test_scans_are_spaced_by_a_quarter_heartbeat_at_most() -> None:
    reg = make(heartbeat_s=0.2)
    assert reg.scan_every_s == pytest.approx(0.05)
    assert make(heartbeat_s=1.0).scan_every_s == 0.1
    assert reg.scan_due(1.0)
    assert not reg.scan_due(1.049)
    assert reg.scan_due(1.05)


def test_next_deadline_follows_heartbeats_silence_and_stall() -> None:
    reg = make()
    assert reg.next_deadline() is None
    rec, _ = reg.hello(b"i1", hello(), 0.0)
    assert reg.deadline_stale
    assert reg.next_deadline() == 1.0  # a heartbeat due
    assert not reg.deadline_stale
    reg.sent_to(rec, 5.0)
    reg.heard_from(rec, 5.0)
    reg.scan_due(5.0)  # a scan makes the answer stale
    assert reg.next_deadline() == 6.0
    reg.heartbeat(rec, hb(progress=0, waiting=True), 5.5)
    assert reg.deadline_stale  # the stall timer stopped
    reg.next_deadline()
    reg.heartbeat(rec, hb(progress=0, waiting=True), 5.6)
    assert reg.deadline_stale is False  # nothing that could make a timer earlier


def test_the_stall_timer_counts_only_for_an_alive_worker_not_waiting() -> None:
    reg = make(heartbeat_s=100.0)  # heartbeats and silence far away
    rec, _ = reg.hello(b"i1", hello(), 0.0)
    assert reg.next_deadline() == 10.0  # the stall timer
    reg.heartbeat(rec, hb(progress=0, waiting=True), 1.0)
    assert reg.next_deadline() == 100.0  # waiting: no stall timer
    reg.heartbeat(rec, hb(progress=0, waiting=False), 2.0)
    assert reg.next_deadline() == 11.0
    reg.set_queued(rec, True, 3.0)
    reg.scan_due(3.0)
    assert reg.next_deadline() == 100.0  # WAITING: no stall timer
    reg.set_queued(rec, False, 4.0)
    assert reg.deadline_stale
    assert reg.next_deadline() == 13.0
    creg = make(heartbeat_s=100.0)
    crec, _ = creg.hello(b"c", hello(role=protocol.ROLE_CLIENT), 0.0)
    assert creg.next_deadline() == 100.0
    crec.set_state(states.SILENT, 0.5)  # a kill follows silence or a stall (the lifecycle)
    creg.mark_killing(crec, 1.0)
    creg.scan_due(1.0)
    assert creg.next_deadline() is None  # killing: no timer of the registry's


def test_a_stalled_worker_still_gets_heartbeats_but_no_silence_timer() -> None:
    reg = make()
    rec, _ = reg.hello(b"i1", hello(), 0.0)
    for t in range(1, 11):
        reg.heartbeat(rec, hb(progress=0), float(t))
        reg.sent_to(rec, float(t))
    reg.check(10.0, lambda key: False)
    assert rec.state == states.STALLED
    assert reg.heartbeats_due(11.0) == [rec]
    reg.scan_due(10.0)
    assert reg.next_deadline() == 11.0


# --- bounded info -------------------------------------------------------------------------


def test_bounded_cuts_depth_keys_items_and_characters() -> None:
    assert bounded({"a": {"b": {"c": {"d": 1}}}}) == {"a": {"b": {"c": {"d": 1}}}}
    assert bounded({"a": {"b": {"c": {"d": {"e": 1}}}}}) == {"a": {"b": {"c": {"d": "..."}}}}
    assert bounded([[[[1]]]]) == [[[[1]]]]
    assert bounded([[[[[1]]]]]) == [[[["..."]]]]
    assert bounded([1, "x", None, True, 2.5]) == [1, "x", None, True, 2.5]
    assert bounded(list(range(MAX_INFO_ITEMS + 5))) == list(range(MAX_INFO_ITEMS))
    many = {f"k{i}": i for i in range(MAX_INFO_KEYS + 3)}
    out = bounded(many)
    assert len(out) == MAX_INFO_KEYS + 1 and out["..."] == "3 more keys"
    assert out["k0"] == 0 and f"k{MAX_INFO_KEYS}" not in out
    assert bounded("s" * 300) == "s" * MAX_INFO_STR_CHARS
    assert bounded({"k" * 300: 1}) == {"k" * MAX_INFO_STR_CHARS: 1}
    assert bounded(b"\x01\x02") == "0102"
    assert bounded({1, 2}) in ("{1, 2}", "{2, 1}")
    assert bounded(("a", ("b",))) == ["a", ["b"]]
    assert bounded({"a": 1}, depth=0) == "..."
    assert bounded({"a": {"b": 1}}, depth=1) == {"a": "..."}


def test_check_goes_past_workers_it_does_not_time() -> None:
    reg = make()
    first, _ = reg.hello(b"a", hello(worker_id="a"), 0.0)
    first.set_state(states.STALLED, 0.4)  # a kill follows silence or a stall (the lifecycle)
    reg.mark_killing(first, 0.5)  # the registry times it no more
    second, _ = reg.hello(b"b", hello(worker_id="b"), 0.0)
    assert reg.check(3.0, lambda key: False) == [(second, states.KILL_SILENT)]


def test_an_info_of_exactly_the_byte_bound_is_kept() -> None:
    reg = make()
    rec, _ = reg.hello(b"i1", hello(), 0.0)
    info: dict[str, str] = {}
    while len(json.dumps(info)) + 300 < MAX_INFO_BYTES:
        info[f"k{len(info):02d}"] = "v" * 250
    size = len(json.dumps(info))
    info["last"] = "v" * (MAX_INFO_BYTES - size - len(', "last": ""'))
    assert len(json.dumps(bounded(info), default=str)) == MAX_INFO_BYTES
    reg.heartbeat(rec, hb(progress=1, **info), 1.0)
    assert rec.info == bounded(info)


def test_progress_after_a_stall_makes_the_timers_stale() -> None:
    reg = make()
    rec, _ = reg.hello(b"i1", hello(), 0.0)
    for t in range(1, 11):
        reg.heartbeat(rec, hb(progress=0), float(t))
    reg.check(10.0, lambda key: False)
    reg.next_deadline()
    assert reg.deadline_stale is False
    reg.heartbeat(rec, hb(progress=1), 11.0)
    assert reg.deadline_stale is True
