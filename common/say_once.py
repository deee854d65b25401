"""Say a repeating failure once: one line when it begins, one when it ends, a count per
minute in between — never a line per retry.

    storage = SayOnce(log, "storage")
    storage.failing(now, "disk_full", "database or disk is full; holding 12 results")
    storage.failing(now + 1, "disk_full", "...")   # nothing logged: the same state
    storage.ok(now + 90)                            # one line: ended after 90 s, 47 times

A change of *state* (another name passed to ``failing``) is a new beginning: the old one is
said to end and the new one to begin. ``now`` is passed in (any monotonic clock in seconds).
"""

from __future__ import annotations

import logging

SUMMARY_EVERY_S = 60.0


class SayOnce:
    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        level: int = logging.WARNING,
        summary_every_s: float = SUMMARY_EVERY_S,
    ) -> None:
        self.logger = logger
        self.what = what
        self.level = level
        self.summary_every_s = summary_every_s
        self.state: str | None = None  # None: all well
        self.since: float | None = None
        self.detail = ""
        self.count = 0  # failures in this state so far
        self._counted_at_summary = 0
        self._summary_at = 0.0

    @property
    def active(self) -> bool:
        return self.state is not None

    def failing(self, now: float, state: str, detail: str = "") -> bool:
        """One more failure in ``state``; True when this call logged its beginning."""
        if self.state is not None and self.state != state:
            self._end(now, f"became {state}")
        self.detail = detail
        if self.state is None:
            self.state, self.since, self.count = state, now, 1
            self._counted_at_summary = 1
            self._summary_at = now + self.summary_every_s
            self.logger.log(self.level, "%s: %s began%s", self.what, state, _tail(detail))
            return True
        self.count += 1
        if now >= self._summary_at:
            self.logger.log(
                self.level,
                "%s: %s still, for %.0f s: %d times in the last %.0f s%s",
                self.what,
                state,
                now - (now if self.since is None else self.since),
                self.count - self._counted_at_summary,
                self.summary_every_s,
                _tail(detail),
            )
            self._counted_at_summary = self.count
            self._summary_at = now + self.summary_every_s
        return False

    def ok(self, now: float, detail: str = "") -> bool:
        """All well; True when this call logged the end of a failure."""
        if self.state is None:
            return False
        self._end(now, detail)
        return True

    def _end(self, now: float, detail: str) -> None:
        self.logger.info(
            "%s: %s ended after %.1f s (%d times)%s",
            self.what,
            self.state,
            now - (now if self.since is None else self.since),
            self.count,
            _tail(detail),
        )
        self.state = self.since = None
        self.count = 0
        self.detail = ""


def _tail(detail: str) -> str:
    return f": {detail}" if detail else ""
