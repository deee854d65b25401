"""Lifecycle states of permits and workers: named constants, and the tables of allowed
transitions (``PERMIT``, ``WORKER``; ``common.lifecycle.transition`` performs one). The
prose below is the tables' summary; the tables are what the code obeys.

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
    STALLED -> ALIVE       progress again
    ALIVE|WAITING -> SILENT   no heartbeat for liveness x heartbeat
    SILENT|STALLED -> KILLING  SIGTERM sent (same host) or KILL message sent (other host)
    SILENT|STALLED|KILLING -> ALIVE   the same process said HELLO again
    KILLING -> GONE        the process is gone (or SIGKILL sent after the grace)
    any -> GONE            BYE, killed, forgotten (a client), or replaced by a new process
"""

from __future__ import annotations

from common.lifecycle import Lifecycle

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


PERMIT = Lifecycle(
    name="permit",
    states=PERMIT_STATES,
    initial=QUEUED,
    edges={
        (QUEUED, GRANTED): "tokens allow it (pushed to the requester)",
        (QUEUED, REJECTED): "deadline passed, too large to ever grant, queue full, draining",
        (QUEUED, CANCELLED): "the requester stopped waiting (CANCEL) or died",
        (GRANTED, SETTLED): "SETTLE arrived within the lease",
        (GRANTED, EXPIRED): "the lease ran out unsettled: cost assumed spent, broker syncs",
    },
)

WORKER = Lifecycle(
    name="worker",
    states=WORKER_STATES,
    initial=ALIVE,
    edges={
        (ALIVE, WAITING): "it has a REQUEST queued at the broker",
        (WAITING, ALIVE): "granted, rejected or cancelled",
        (ALIVE, STALLED): "heartbeats arrive but progress is frozen while not waiting",
        (STALLED, ALIVE): "progress again, or the same process said HELLO again",
        (ALIVE, SILENT): "no heartbeat for liveness x heartbeat",
        (WAITING, SILENT): "no heartbeat for liveness x heartbeat",
        (SILENT, KILLING): "SIGTERM sent (same host) or KILL message sent (other host)",
        (STALLED, KILLING): "SIGTERM sent (same host) or KILL message sent (other host)",
        (SILENT, ALIVE): "the same process said HELLO again",
        (KILLING, ALIVE): "the same process said HELLO again",
        **{(s, GONE): "BYE, killed, forgotten, or replaced" for s in WORKER_STATES if s != GONE},
    },
)
