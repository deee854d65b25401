"""Process identity on this host: is pid P still the process that said HELLO?

A pid is reused by the kernel once its process is gone, so the broker never signals a pid
without first checking that the process's start time (clock ticks since boot, field 22 of
``/proc/<pid>/stat``) still matches the one the worker reported in HELLO.
"""

from __future__ import annotations

import os
import socket


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields 3 onwards of ``/proc/<pid>/stat``, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces or ')'.
    return data[data.rfind(b")") + 2 :].split()


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None when there is no such process."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields is not None else None  # field 22 overall
    except (IndexError, ValueError):
        return None


def process_state(pid: int) -> str | None:
    """One-letter state of ``pid`` (R, S, T stopped, Z zombie, ...), or None when gone."""
    fields = _stat_fields(pid)
    return fields[0].decode() if fields else None


def same_process(pid: int, start_time: int) -> bool:
    """True when ``pid`` exists and started at ``start_time`` (not a reused pid)."""
    return process_start_time(pid) == start_time


def this_host() -> str:
    return socket.gethostname()


def own_identity() -> tuple[int, int]:
    """(pid, start_time) of the calling process."""
    pid = os.getpid()
    start = process_start_time(pid)
    return pid, start if start is not None else 0
