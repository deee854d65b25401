"""Lifecycle states of permits and workers, as named constants (no dependencies).

Permit::

    QUEUED -> GRANTED      tokens allow it (pushed to the requester)
    QUEUED -> REJECTED     deadline passed, too large to ever grant, queue full, draining
    QUEUED -> CANCELLED    the requester stopped waiting (CANCEL) or died
    GRANTED -> SETTLED     SETTLE arrived within the lease
    GRANTED -> EXPIRED     the lease ran out unsettled: cost assumed spent, broker syncs

Worker::

    ALIVE -> WAITING       it has a REQUEST queued at the broker
    WAITING -> ALIVE       granted, rejected or cancelled
    ALIVE -> STALLED       heartbeats arrive but progress is frozen while not waiting
    ALIVE|WAITING -> SILENT   no heartbeat for liveness x heartbeat
    SILENT|STALLED -> KILLING  SIGTERM sent (same host) or KILL message sent (other host)
    KILLING -> GONE        the process is gone (or SIGKILL sent after the grace)
    any -> GONE            BYE received
"""

from __future__ import annotations

# Permit states.
QUEUED = "queued"
GRANTED = "granted"
SETTLED = "settled"
EXPIRED = "expired"
REJECTED = "rejected"
CANCELLED = "cancelled"
PERMIT_STATES = (QUEUED, GRANTED, SETTLED, EXPIRED, REJECTED, CANCELLED)

# Worker states.
ALIVE = "alive"
WAITING = "waiting"
STALLED = "stalled"
SILENT = "silent"
KILLING = "killing"
GONE = "gone"
WORKER_STATES = (ALIVE, WAITING, STALLED, SILENT, KILLING, GONE)

# Kill reasons (status, logs and metrics use these words).
KILL_SILENT = "silent"
KILL_STALLED = "stalled"
KILL_REASONS = (KILL_SILENT, KILL_STALLED)
