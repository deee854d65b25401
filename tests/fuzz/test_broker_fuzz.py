"""Property-based fuzzing of the broker's handlers, in process (``fuzz.inproc``):
``Broker.dispatch(frames, now)`` and the housekeeping that follows each message (what
``loop_once`` does after its poll), on a fake clock, with a fake ROUTER (replies are
recorded, sends sometimes fail), a fake /token thread (answered from a model Keepa account,
sometimes with an error) and a fake signal function (nothing is ever signalled).

Hypothesis draws a seed and a length; each example drives one fresh broker with a batch of
inputs from a few peers: valid protocol messages aimed at its state (HELLOs, heartbeats,
requests with retried and reused seqs, cancels, settles of real and made-up permits with
real and junk envelopes, BYEs, STATUS, also REQ-style), broker-to-peer messages, mutated
and random frames, and wrong frame counts; the clock jumps between inputs. At least
``FLEET_FUZZ_EXAMPLES`` inputs in all. After every input:

* no exception escapes ``dispatch`` or the housekeeping;
* every bad input is counted once, under its code, and answered (ERROR or DISCONNECT);
  a good one moves no counter but the semantic ones of its handler;
* no state corruption: the ledger's in-flight cost is the sum of the granted permits'
  costs; granted = settled + expired + in flight; every request is granted, queued,
  cancelled or rejected; a permit id is only ever granted for one (seq, cost); one
  ``(worker, seq)`` gets at most one permit, however often it is retried (until the worker's
  answers are dropped with it); registry indexes agree; the bounds hold (workers, queued
  requests per worker, kept records);
* the status is strict JSON and encodes as a STATUS_REPLY (checked every few inputs).
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from doubles import envelope
from fuzz.fuzz_support import (
    DECODE_CODES,
    FUZZ_INPUTS,
    FUZZ_SETTINGS,
    any_value,
    one_frame,
    run_counted,
)
from fuzz.inproc import THIS_HOST, FakeRouter, FakeSync, make_broker
from hypothesis import given
from hypothesis import strategies as st

from broker import registry as registry_mod
from broker import states
from broker.permits import ANSWERS_PER_WORKER, MAX_FINISHED
from broker.server import MAX_SETTLED_IDS
from broker.sync import SyncResult
from common import protocol
from common.errors import ProtocolError
from common.keepa import TokenEnvelope

MAX_WORKERS = 4
MAX_QUEUED = 3
IDENTITIES = [b"peer-a", b"peer-b", b"peer-c", b"peer-d", b"peer-e", b"\x00\x01"]
WORKER_IDS = ["w1", "w2", "w3", "w4", "w5", "w6"]
SEMANTIC_CODES = {"bad_hello", "too_many_workers", "bad_request", "bad_envelope"}
SEMANTIC_CODES |= {"bad_settle_status", "bad_permit"}
HANDLED = {"HELLO", "STATUS", "HEARTBEAT", "REQUEST", "CANCEL", "SETTLE", "BYE"}
SETTLE_STATUSES = ["ok", "http_error", "timeout", "connection_error", "error", "not_sent"]

STATUS_EVERY = 10  # the full status check (the costliest) every this many inputs
MAX_STEPS = 60  # inputs per example: below ANSWERS_PER_WORKER, so no answer is ever evicted
assert MAX_STEPS < ANSWERS_PER_WORKER


class Tally(Counter[str]):
    """What one fuzz run fed and saw: inputs, bad inputs, grants (one per test call, so a
    rerun in the same process fuzzes again)."""


class Account:
    """A Keepa account on the fake clock, for /token answers and envelopes."""

    def __init__(self, rng: random.Random) -> None:
        self.rate = rng.choice([1, 5, 20, 100])
        self.balance = rng.choice([rng.randint(-50, 60 * self.rate), 60 * self.rate])

    def envelope(self, now: float, consumed: int = 0) -> TokenEnvelope:
        self.balance = min(self.balance, 60 * self.rate)
        return envelope(now, self.balance, self.rate, consumed)


class Driver:
    """One broker, its peers and the oracle's bookkeeping."""

    def __init__(self, rng: random.Random, tally: Tally | None = None) -> None:
        self.rng = rng
        self.tally = tally if tally is not None else Tally()
        self.signals: list[tuple[int, int]] = []
        self.broker = make_broker(
            self.signals, broker__max_workers=MAX_WORKERS, broker__max_queued_per_worker=MAX_QUEUED
        )
        self.router: FakeRouter = self.broker._router  # type: ignore[assignment]
        self.sync: FakeSync = self.broker._sync  # type: ignore[assignment]
        self.account = Account(rng)
        self.now = 1000.0
        self.seqs: dict[bytes, int] = Counter()
        self.granted: dict[str, tuple[int, int]] = {}  # permit -> (seq, cost)
        self.answered_syncs = 0
        self.steps = 0
        # (book worker key, seq) -> the permit granted for it, from the permit book's own
        # decisions; a worker's entries go when the book drops the worker (its answers with it).
        self.permit_of: dict[tuple[str, int], str] = {}
        self._spy_on_decisions()

    def _spy_on_decisions(self) -> None:
        book = self.broker.permits
        submit, schedule, drop_worker = book.submit, book.schedule, book.drop_worker

        def spied_submit(*args: Any, **kwargs: Any) -> Any:
            decision = submit(*args, **kwargs)
            self.note_decisions([decision] if decision is not None else [])
            return decision

        def spied_schedule(*args: Any, **kwargs: Any) -> Any:
            decisions = schedule(*args, **kwargs)
            self.note_decisions(decisions)
            return decisions

        def spied_drop_worker(worker: str, *args: Any, **kwargs: Any) -> Any:
            for key in [k for k in self.permit_of if k[0] == worker]:
                del self.permit_of[key]
            return drop_worker(worker, *args, **kwargs)

        book.submit = spied_submit  # type: ignore[method-assign]
        book.schedule = spied_schedule  # type: ignore[method-assign]
        book.drop_worker = spied_drop_worker  # type: ignore[method-assign]

    def note_decisions(self, decisions: list[Any]) -> None:
        for d in decisions:
            if d.kind != "grant":
                continue
            first = self.permit_of.setdefault((d.worker, d.seq), d.permit)
            assert first == d.permit, (
                f"worker {d.worker} seq {d.seq} got a second permit {d.permit} (first {first})"
            )
            self.tally["seq_grants"] += 1

    # --- inputs -------------------------------------------------------------------------

    def hello(self, identity: bytes) -> protocol.Hello:
        rng = self.rng
        if rng.random() < 0.85:  # a sensible one, mostly on another host (KILL by message)
            return protocol.Hello(
                worker_id=rng.choice(WORKER_IDS),
                pid=rng.choice([4242, 4243, 99999, 2]),
                host=rng.choice(["elsewhere", "elsewhere", THIS_HOST]),
                start_time=12345,
                role="all",
                version="fuzz",
            )
        return protocol.Hello(
            worker_id=rng.choice([*WORKER_IDS, "", "x" * 200, "bad\nid"]),
            pid=rng.choice([1, 2, 4242, 99999, 0, -5, 2**40]),
            host=rng.choice([THIS_HOST, "elsewhere", "", "\x00"]),
            start_time=rng.choice([0, 1, 12345, -1, 2**63]),
            role=rng.choice(["all", "ingest", "r" * 100]),
            version="fuzz",
        )

    def valid_message(self, identity: bytes) -> protocol.Message:
        rng = self.rng
        kind = rng.choice(
            ["hello", "heartbeat", "request", "request", "request", "cancel", "settle", "settle",
             "bye", "status", "peer_type"]
        )  # fmt: skip
        if kind == "hello" or (
            self.broker.registry.by_identity(identity) is None and rng.random() < 0.5
        ):
            return self.hello(identity)
        if kind == "heartbeat":
            info: dict[str, Any] = {"pipeline": {"deals_live": rng.randint(0, 9)}}
            if rng.random() < 0.3:
                info = {str(i): any_value(rng) for i in range(rng.randint(0, 80))}
            return protocol.Heartbeat(
                progress=rng.randint(0, 5),
                waiting=rng.random() < 0.5,
                stage=rng.choice(["ingest", "", "s" * 100]),
                items_done=rng.randint(0, 10),
                info=info,
            )
        if kind == "request":
            self.seqs[identity] += 1
            seq = self.seqs[identity] if rng.random() < 0.7 else rng.randint(-2, 8)
            if rng.random() < 0.8:
                cost, deadline = rng.choice([1, 5, 20, 50]), rng.choice([30.0, 30.0, 1.0])
            else:
                cost = rng.choice([250, 0, -3, 10**12, 60 * self.account.rate])
                deadline = rng.choice([0.0, -1.0, float("inf"), float("nan"), 1e9])
            return protocol.Request(
                seq=seq, cost=cost, priority=rng.choice([0, 0, 1, -1, 10**7]), deadline_s=deadline
            )
        if kind == "cancel":
            return protocol.Cancel(seq=rng.randint(-1, self.seqs[identity] + 1))
        if kind == "settle":
            permits = sorted(self.granted)
            roll = rng.random()
            if permits and roll < 0.8:
                permit = rng.choice(permits)
            elif roll < 0.97:
                permit = "p-" + str(rng.random())
            else:
                permit = "p" * rng.choice([65, 1000, 30_000])
            cost = self.granted.get(permit, (0, 5))[1]
            envelope: dict[str, Any] | None
            roll = rng.random()
            if roll < 0.6:
                consumed = max(0, cost + rng.randint(-2, 2))
                self.account.balance -= consumed
                envelope = self.account.envelope(self.now, consumed).to_wire()
            elif roll < 0.8:
                envelope = None
            else:
                envelope = {k: any_value(rng, 0) for k in ("timestamp", "tokensLeft", "refillIn")}
                if rng.random() < 0.5:
                    envelope["refillRate"] = any_value(rng, 0)
            return protocol.Settle(
                permit=permit,
                status=rng.choice([*SETTLE_STATUSES, "weird"]),
                envelope=envelope,
                http_status=rng.choice([None, 200, 429, 500, 402, -1, 2**40]),
            )
        if kind == "bye":
            return protocol.Bye(reason=rng.choice(["sigterm", "", "r" * 500]))
        if kind == "status":
            return protocol.Status()
        return rng.choice(
            [
                protocol.Grant(seq=1, permit="p", cost=5, lease_ttl_s=1.0),
                protocol.Kill(reason="someone else says die"),
                protocol.Welcome("b", 1.0, 5, 10.0),
                protocol.Error("x"),
            ]
        )

    def frames(self) -> tuple[list[bytes], protocol.Message | None]:
        """One input: the ROUTER frames and, for a well-formed one, the message it carries."""
        rng = self.rng
        identity = rng.choice(IDENTITIES)
        registered = [r.identity for r in self.broker.registry.live()]
        if registered and rng.random() < 0.6:
            identity = rng.choice(registered)
        roll = rng.random()
        if roll < 0.75:
            msg = self.valid_message(identity)
            payload = msg.encode()
            if rng.random() < 0.05:
                return [identity, b"", payload], msg  # REQ-style delimiter
            return [identity, payload], msg
        if roll < 0.96:
            return [identity, one_frame(rng, self.valid_message(identity))], None
        extra = [rng.randbytes(rng.randint(0, 4)) for _ in range(rng.randint(2, 3))]
        return [identity, *extra], None

    # --- one step -----------------------------------------------------------------------

    def step(self) -> None:
        rng, b = self.rng, self.broker
        frames, msg = self.frames()
        self.steps += 1
        expected = self.expected_code(frames)
        rec = b.registry.by_identity(frames[0])
        killing = rec is not None and rec.state == states.KILLING
        bad_before = Counter(b.bad_messages)
        sent_before, failures_before = len(self.router.sent), b.send_failures
        if rng.random() < 0.03:
            self.router.fail_next = 1
        b.dispatch(frames, self.now)
        self.router.fail_next = 0
        self.tally["inputs"] += 1
        delta = Counter(b.bad_messages)
        delta.subtract(bad_before)
        delta = +delta
        replies = [self.decode_reply(f) for f in self.router.sent[sent_before:]]
        sent_ok = b.send_failures == failures_before
        self.check_counted(expected, msg, delta, replies, sent_ok=sent_ok, killing=killing)
        self.note_grants(replies)
        # Time passes; housekeeping as the loop does after each turn.
        roll = rng.random()
        self.now += 0.0 if roll < 0.3 else rng.uniform(0, 0.5) if roll < 0.9 else rng.uniform(1, 30)
        self.maybe_answer_sync()
        sent_before = len(self.router.sent)
        b.housekeeping(self.now)
        self.note_grants([self.decode_reply(f) for f in self.router.sent[sent_before:]])
        self.check_state(full=self.steps % STATUS_EVERY == 0)

    def expected_code(self, frames: list[bytes]) -> str | None:
        """The bad-message code the input must be counted under (None: a good message)."""
        if not (len(frames) == 2 or (len(frames) == 3 and frames[1] == b"")):
            return "bad_frames"
        try:
            decoded = protocol.decode(frames[-1])
        except ProtocolError as exc:
            return exc.code
        if decoded.TYPE not in HANDLED:
            return "unexpected_type"
        if (
            decoded.TYPE not in ("HELLO", "STATUS")
            and self.broker.registry.by_identity(frames[0]) is None
        ):
            return "unregistered"
        return None

    def decode_reply(self, frames: list[bytes]) -> protocol.Message:
        assert frames[0] in IDENTITIES or frames[0] == b"", frames[0]
        return protocol.decode(frames[-1], max_bytes=protocol.MAX_REPLY_BYTES)

    def maybe_answer_sync(self) -> None:
        b = self.broker
        if not b.policy.in_flight or self.rng.random() < 0.3:
            return
        reason = self.sync.requests[-1] if self.sync.requests else "start"
        if self.rng.random() < 0.8:
            result = SyncResult(reason, self.now, self.now, self.account.envelope(self.now))
        else:
            result = SyncResult(reason, self.now, self.now, None, error="HTTP 500", status=500)
        b._on_sync_result(result)
        self.answered_syncs += 1

    # --- the oracle ---------------------------------------------------------------------

    def check_counted(
        self,
        expected: str | None,
        msg: protocol.Message | None,
        delta: Counter[str],
        replies: list[protocol.Message],
        *,
        sent_ok: bool,
        killing: bool,
    ) -> None:
        b = self.broker
        if expected is not None:
            self.tally["bad"] += 1
            assert delta == Counter({expected: 1}), (expected, delta)
            if sent_ok:
                assert replies, "a bad message got no answer"
                last = replies[-1]
                if expected == "unregistered":
                    assert isinstance(last, protocol.Disconnect), last
                else:
                    assert isinstance(last, protocol.Error) and last.code == expected, last
            return
        # A good message: only its handler's semantic counters may move.
        assert set(delta) <= SEMANTIC_CODES, delta
        assert sum(delta.values()) <= 2, delta
        if isinstance(msg, protocol.Request) and not killing:
            problem = b._check_request(msg)
            assert delta.get("bad_request", 0) == (1 if problem else 0), (problem, delta)
        if isinstance(msg, protocol.Hello):
            try:
                registry_mod.check_hello(msg)
            except ProtocolError:
                assert delta == Counter({"bad_hello": 1}), delta

    def note_grants(self, replies: list[protocol.Message]) -> None:
        for reply in replies:
            if isinstance(reply, protocol.Grant):
                seen = self.granted.setdefault(reply.permit, (reply.seq, reply.cost))
                assert seen == (reply.seq, reply.cost), f"{reply.permit} granted twice: {seen}"
                self.tally["grants"] += 1

    def check_state(self, *, full: bool = True) -> None:
        b = self.broker
        ledger, book, reg = b.ledger, b.permits, b.registry
        granted = book._granted
        assert ledger.in_flight() == sum(p.cost for p in granted.values())
        assert set(ledger._in_flight) == set(granted)
        assert ledger.in_flight_permits() == len(granted)
        assert all(p.state == states.GRANTED for p in granted.values())
        assert all(p.state == states.QUEUED for p in book._queued.values())
        c = book.counts
        assert c["granted"] == c["settled"] + c["expired"] + len(granted), dict(c)
        left = c["requested"] - c["granted"] - c["cancelled"] - len(book._queued)
        assert 0 <= left <= c["rejected"], dict(c)
        assert len(self.granted) <= c["granted"]
        assert len(book._queue) == len(book._queued) == sum(book._queued_per_worker.values())
        assert all(n <= MAX_QUEUED for n in book._queued_per_worker.values())
        assert all(len(a) <= ANSWERS_PER_WORKER for a in book._answers.values())
        assert len(book._finished) <= MAX_FINISHED
        assert len(b._settled_ids) <= MAX_SETTLED_IDS
        assert reg.live_count() <= MAX_WORKERS
        for identity, rec in reg._by_identity.items():
            assert rec.identity == identity and rec.state != states.GONE
        for worker_id, rec in reg._by_id.items():
            assert rec.worker_id == worker_id and reg._by_key.get(rec.key) is rec
        assert len(reg._gone) <= registry_mod.MAX_GONE_KEPT
        assert set(b.bad_messages) <= DECODE_CODES | SEMANTIC_CODES | {
            "bad_frames", "unexpected_type", "unregistered", "internal_error"
        }  # fmt: skip
        assert "internal_error" not in b.bad_messages
        for pid, _ in self.signals:
            assert pid > 1, "the broker signalled an unsafe pid"
        if not full:
            return
        state = b.status(self.now)
        json.dumps(state, allow_nan=False)
        assert protocol.StatusReply(state).encode()


def fuzz_broker(tally: Tally) -> Callable[[], None]:
    """The @given target feeding one run's ``tally``."""

    @FUZZ_SETTINGS
    @given(st.integers(0, 2**32 - 1), st.integers(20, MAX_STEPS))
    def run(seed: int, steps: int) -> None:
        driver = Driver(random.Random(seed), tally)
        for _ in range(steps):
            driver.step()
        driver.check_state(full=True)

    return run


def test_broker_handlers_survive_and_stay_consistent(caplog: pytest.LogCaptureFixture) -> None:
    # The broker's warnings (each bad message's first ones, per fresh broker) at full volume
    # would cost most of the run in pytest's log capture.
    caplog.set_level(logging.ERROR, logger="broker")
    tally = Tally()
    total = run_counted(fuzz_broker(tally), lambda: tally["inputs"])
    assert total >= FUZZ_INPUTS
    # The inputs reach the broker's state: bad ones counted, and grants made.
    assert tally["bad"] > total // 10, tally
    assert tally["grants"] > total // 100, tally
    assert tally["seq_grants"] > total // 100, tally


def test_a_retried_request_is_answered_with_its_first_permit() -> None:
    """The (worker, seq) check of the fuzz oracle on its own: a worker asks again for a seq
    it was granted (a lost GRANT) and gets the same permit, never a second one."""
    driver = Driver(random.Random(2))
    b, peer = driver.broker, b"peer-a"
    hello = protocol.Hello("w1", 4242, "elsewhere", 12345, "all", "fuzz")
    b.dispatch([peer, hello.encode()], driver.now)
    b._on_sync_result(SyncResult("start", driver.now, driver.now, envelope(driver.now, 500, 5)))
    request = protocol.Request(seq=1, cost=5, priority=0, deadline_s=30.0)
    grants = []
    for _ in range(3):
        sent = len(driver.router.sent)
        b.dispatch([peer, request.encode()], driver.now)
        b.housekeeping(driver.now)
        replies = [driver.decode_reply(f) for f in driver.router.sent[sent:]]
        grants += [r for r in replies if isinstance(r, protocol.Grant)]
    assert len(grants) == 3, grants
    assert len({g.permit for g in grants}) == 1, grants
    assert driver.tally["seq_grants"] == 3


def test_raw_msgpack_edge_cases_are_counted() -> None:
    driver = Driver(random.Random(1))
    for payload in (
        msgpack.packb([1, "HELLO", {"worker_id": "w", "pid": 2**64 - 1}]),
        msgpack.packb([1, "REQUEST", {"seq": 1, "cost": 2**64 - 1}]),
        b"\xdd\xff\xff\xff\xff",
        b"\x00" * (protocol.MAX_MESSAGE_BYTES + 1),
    ):
        driver.broker.dispatch([b"peer-a", payload], driver.now)
    assert sum(driver.broker.bad_messages.values()) == 4, driver.broker.bad_messages
