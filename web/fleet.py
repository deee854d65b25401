"""The fleet panel's data: the broker's status snapshot (the same dict ``keepa-fleet status
--json`` prints, fetched with ``common.status_client.fetch_status``), sampled on a thread into a
short history of token figures, and the health problems read off it.

The dashboard reads the JSON dict only (key by key, each with a default), so a broker that
adds or renames a figure never breaks the page.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

SAMPLE_EVERY_S = 1.0
HISTORY_S = 900.0  # tokens over time: the last 15 minutes
STATUS_TIMEOUT_S = 2.0
STALE_HEARTBEAT_FACTOR = 3.0  # a heartbeat older than this many intervals is a problem
TOKEN_FIELDS = ("now", "available", "in_flight", "soft_floor", "refill_rate", "cap")

StatusFetch = Callable[[], dict[str, Any] | None]


def token_sample(state: dict[str, Any], at: float) -> dict[str, Any]:
    """One point of the tokens chart (wall-clock ``at`` in seconds)."""
    tokens = state.get("tokens") or {}
    sample: dict[str, Any] = {"at": at}
    for key in TOKEN_FIELDS:
        value = tokens.get(key)
        sample[key] = value if isinstance(value, int | float) else None
    sample["recharge"] = bool(tokens.get("recharge_mode"))
    return sample


def health_problems(state: dict[str, Any] | None, answered_age_s: float | None) -> list[str]:
    """What an operator should look at, one sentence each; [] when all is well."""
    if state is None:
        if answered_age_s is None:
            return ["the broker has not answered yet (starting, or down)"]
        return [f"the broker has not answered for {answered_age_s:.0f} s"]
    problems: list[str] = []
    health = state.get("health")
    listed = health.get("problems") if isinstance(health, dict) else health
    if isinstance(listed, list):
        problems += [_problem_text(p) for p in listed if p]
    tokens = state.get("tokens") or {}
    keepa = state.get("keepa") or {}
    pipeline = state.get("pipeline") or {}
    settings = state.get("settings") or {}
    if tokens.get("now") is None:
        problems.append("no token figure from Keepa yet")
    if tokens.get("recharge_mode"):
        problems.append(
            f"recharge mode: tokens fell under the soft floor {tokens.get('soft_floor', '?')}; "
            "grants resume when they refill"
        )
    if keepa.get("status_429"):
        problems.append(f"Keepa answered 429 {keepa['status_429']} times")
    if keepa.get("last_error"):
        problems.append(f"last Keepa error: {keepa['last_error']}")
    if tokens.get("unaccounted"):
        problems.append(f"{tokens['unaccounted']} tokens spent that no permit accounts for")
    if pipeline.get("feed_stale"):
        problems.append("the deal feed is stale")
    if state.get("draining"):
        problems.append("the broker is draining (stopping)")
    heartbeat = settings.get("heartbeat_s")
    for w in state.get("workers") or []:
        age = w.get("heartbeat_age_s")
        if w.get("state") in ("gone", "dead", "killed"):
            continue
        if (
            isinstance(heartbeat, int | float)
            and isinstance(age, int | float)
            and age > max(5.0, STALE_HEARTBEAT_FACTOR * heartbeat)
        ):
            problems.append(f"worker {w.get('id', '?')}: no heartbeat for {age:.0f} s")
    return list(dict.fromkeys(problems))


def _problem_text(problem: Any) -> str:
    """A health problem as a sentence, whether the broker sends text or a dict."""
    if isinstance(problem, dict):
        for key in ("message", "problem", "text", "detail"):
            if problem.get(key):
                where = problem.get("component") or problem.get("what") or problem.get("name")
                return f"{where}: {problem[key]}" if where else str(problem[key])
        return ", ".join(f"{k} {v}" for k, v in sorted(problem.items()))
    return str(problem)


class FleetMonitor:
    """Samples the broker every ``every_s`` seconds on its own thread; the web handlers read
    ``view()``. ``fetch`` returns the status dict or None (no answer in time)."""

    def __init__(
        self,
        fetch: StatusFetch,
        *,
        every_s: float = SAMPLE_EVERY_S,
        history_s: float = HISTORY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if every_s <= 0:
            raise ValueError("every_s must be positive")
        self.fetch = fetch
        self.every_s = every_s
        self.clock = clock
        self.history: deque[dict[str, Any]] = deque(maxlen=max(2, int(history_s / every_s)))
        self.state: dict[str, Any] | None = None
        self.answered_at: float | None = None
        self.started_at = clock()
        self.polls = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._silent = False

    def poll_once(self) -> None:
        try:
            state = self.fetch()
        except Exception:  # a loop boundary: one bad answer must not end the sampling
            log.exception("reading the broker's status failed")
            state = None
        now = self.clock()
        with self._lock:
            self.polls += 1
            self.state = state
            if state is not None:
                self.answered_at = now
                self.history.append(token_sample(state, now))
        if state is None and not self._silent:
            log.warning("the broker does not answer status; the fleet panel shows it down")
        elif state is not None and self._silent:
            log.info("the broker answers status again")
        self._silent = state is None

    def view(self) -> dict[str, Any]:
        """What the fleet panel shows: the newest snapshot, its age, the history, problems."""
        now = self.clock()
        with self._lock:
            state = self.state
            answered = self.answered_at
            history = list(self.history)
            polls = self.polls
        age = None if answered is None else max(0.0, now - answered)
        return {
            "at": now,
            "polls": polls,
            "answered": state is not None,
            "answered_age_s": age,
            "state": state,
            "history": history,
            "problems": health_problems(state, age),
        }

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fleet-monitor", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.poll_once()
            self._stop.wait(max(0.0, self.every_s - (time.monotonic() - started)))
