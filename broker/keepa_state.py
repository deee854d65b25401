"""What the broker knows about the Keepa key and Keepa itself: a pure state machine.

=====================  ============================================  ========================
state                  entered on                                    requests for permits
=====================  ============================================  ========================
``ok``                 any answer from Keepa not named below         granted as usual
``key_no_access``      HTTP 402 (no subscription, expired, unpaid),  rejected
                       or an envelope with refill rate 0 (no plan)   ``keepa_no_access``
``key_invalid``        HTTP 400 on ``/token`` (a malformed key)      rejected
                                                                     ``keepa_key_invalid``
``keepa_unreachable``  ``/token`` failing (no answer, dropped        held (queued, granted
                       connection, 5xx, 503); or ``UNREACHABLE_      when Keepa answers;
                       AFTER`` calls under permits failing so        rejected only at their
                       in a row                                      deadline)
=====================  ============================================  ========================

Transitions (``# FROM -> TO``): ``ok -> <problem>`` on its cause; ``<problem> -> <other
problem>`` on the other's cause; ``<problem> -> ok`` on the first answer from Keepa that is
none of them: a ``/token`` answered 200; out of ``keepa_unreachable`` also a call under a
permit answered 2xx (out of a key state such a call, sent before the key lost access, only
brings the next re-check forward).

Out of ``ok`` nothing is spent, so nothing but ``/token`` (free) can show that the problem
has ended: ``recheck_due(now)`` says when to ask it again. The first re-check comes
``RECHECK_MIN_S`` after the problem began, each next one after twice the wait before it,
capped at ``recheck_max_s`` (``broker.recheck_max_s``, 60 s by default: at most once a minute
once the state is old). It never stops re-checking: a user who pays, fixes the key or waits
out Keepa's outage gets a working fleet back without a restart.

Pure: ``now`` is passed in (the broker's monotonic clock); nothing here logs or does I/O.
"""

from __future__ import annotations

import dataclasses

from common import protocol

OK = "ok"
KEY_NO_ACCESS = "key_no_access"
KEY_INVALID = "key_invalid"
KEEPA_UNREACHABLE = "keepa_unreachable"
STATES = (OK, KEY_NO_ACCESS, KEY_INVALID, KEEPA_UNREACHABLE)

# REJECT.reason of a request made while the state is not ok (wire words: common.protocol).
REJECT_REASONS = {
    KEY_NO_ACCESS: protocol.REJECT_KEEPA_NO_ACCESS,
    KEY_INVALID: protocol.REJECT_KEEPA_KEY_INVALID,
    KEEPA_UNREACHABLE: protocol.REJECT_KEEPA_UNREACHABLE,
}
# What status says of each problem, and what the fleet does about it.
SAYS = {
    KEY_NO_ACCESS: "Keepa key has no access (HTTP 402: subscription expired or unpaid)",
    KEY_INVALID: "Keepa key invalid (HTTP 400 on /token: malformed or unknown key)",
    KEEPA_UNREACHABLE: "Keepa unreachable (no answer, connection errors or 5xx)",
}
DOES = "no permits granted; re-checking /token by itself, at least once every {every:.0f} s"

NO_PLAN = "Keepa reports a refill rate of 0 (no plan on the key)"
RECHECK_MIN_S = 1.0
RECHECK_MAX_S = 60.0
UNREACHABLE_AFTER = 2  # failed calls under permits in a row (a /token failure: at once)


@dataclasses.dataclass
class KeepaState:
    recheck_max_s: float = RECHECK_MAX_S
    recheck_min_s: float = RECHECK_MIN_S
    state: str = OK
    since: float | None = None  # when the current problem began
    detail: str = ""
    checked_at: float | None = None  # the latest /token answer (or failure) while not ok
    wait_s: float = 0.0  # between the latest re-check and the next
    call_failures: int = 0  # calls under permits failing as unreachable, in a row
    changes: int = 0

    def __post_init__(self) -> None:
        if not self.recheck_max_s > 0:
            raise ValueError(f"recheck_max_s must be > 0, not {self.recheck_max_s!r}")
        self.recheck_min_s = min(self.recheck_min_s, self.recheck_max_s)

    @property
    def ok(self) -> bool:
        return self.state == OK

    @property
    def reject_reason(self) -> str:
        """REJECT.reason while not ok ('' when ok)."""
        return REJECT_REASONS.get(self.state, "")

    # --- inputs -------------------------------------------------------------------------

    def on_token(
        self, now: float, http_status: int | None, error: str = "", refill_rate: int | None = None
    ) -> str | None:
        """A ``/token`` answer: ``http_status`` (None: no answer), ``error`` empty on
        success, ``refill_rate`` of its envelope. Returns the new state when it changed."""
        if not error and refill_rate == 0:
            changed = self._to(KEY_NO_ACCESS, now, NO_PLAN)
            if changed is None:
                self._rechecked(now)
            return changed
        if not error:
            return self._to(OK, now, "")
        if http_status == 402:
            new = KEY_NO_ACCESS
        elif http_status == 400:
            new = KEY_INVALID
        elif http_status is None or http_status >= 500:
            new = KEEPA_UNREACHABLE
        else:
            # Another 4xx (429 never on /token): Keepa answered; not one of our states.
            return self._to(OK, now, "")
        changed = self._to(new, now, error)
        if changed is None:
            self._rechecked(now)
        return changed

    def on_call(
        self, now: float, http_status: int | None, status: str, refill_rate: int | None = None
    ) -> str | None:
        """The SETTLE of a call under a permit (``status`` as on the wire; ``refill_rate`` of
        its envelope, if any). Returns the new state when it changed, else None."""
        if status == "not_sent":
            return None
        if refill_rate == 0:
            # No plan: what a lapsed key's envelope says, sometimes before the first 402.
            return self._to(KEY_NO_ACCESS, now, NO_PLAN)
        if http_status == 402:
            self.call_failures = 0
            return self._to(KEY_NO_ACCESS, now, "HTTP 402 on a call under a permit")
        if status == "ok":
            if self.state in (KEY_NO_ACCESS, KEY_INVALID):
                # A call sent before the key lost access can answer after: only /token says
                # the key works again. Ask it now.
                self.wait_s = 0.0
                return None
            return self._to(OK, now, "")
        unreachable = http_status is None or http_status >= 500
        if not unreachable:
            self.call_failures = 0
            return None  # Keepa answered (a 400 on /product is the request's, not the key's)
        self.call_failures += 1
        if self.call_failures >= UNREACHABLE_AFTER and self.state == OK:
            return self._to(
                KEEPA_UNREACHABLE, now, f"{self.call_failures} calls failed in a row ({status})"
            )
        return None

    # --- timers -------------------------------------------------------------------------

    def recheck_due(self, now: float) -> bool:
        at = self.next_recheck_at()
        return at is not None and now >= at

    def next_recheck_at(self) -> float | None:
        if self.ok:
            return None
        base = self.checked_at if self.checked_at is not None else self.since
        return (base or 0.0) + self.wait_s

    # --- views --------------------------------------------------------------------------

    def problem(self, now: float) -> dict[str, object] | None:
        """The problem as status shows it, or None when ok."""
        if self.ok:
            return None
        return {
            "problem": self.state,
            "since_s": round(now - (now if self.since is None else self.since), 3),
            "says": SAYS[self.state],
            "does": DOES.format(every=self.recheck_max_s),
            "detail": self.detail,
            "next_recheck_in_s": round(max(0.0, (self.next_recheck_at() or now) - now), 3),
        }

    # --- helpers ------------------------------------------------------------------------

    def _rechecked(self, now: float) -> None:
        self.checked_at = now
        self.wait_s = min(self.recheck_max_s, max(self.recheck_min_s, self.wait_s * 2))

    def _to(self, new: str, now: float, detail: str) -> str | None:
        if new == OK:
            self.call_failures = 0
        if new == self.state:
            if new != OK:
                self.detail = detail[:200]
            return None
        # FROM -> TO: ok -> problem, problem -> other problem, problem -> ok
        self.state = new
        self.changes += 1
        self.detail = detail[:200]
        if new == OK:
            self.since = self.checked_at = None
            self.wait_s = 0.0
        else:
            self.since = now
            self.checked_at = now
            self.wait_s = self.recheck_min_s
        return new
