"""No process of the fleet outlives the supervisord that started it.

supervisord normally stops its programs before it exits, but if it dies without doing so
(SIGKILL, or a crash such as a broken stdout pipe when ``make run | tee`` is interrupted)
its children would keep running, holding ports and the database. Under supervisord
(``SUPERVISOR_ENABLED`` in the environment) each process asks the Linux kernel for SIGTERM
when its parent dies (``PR_SET_PDEATHSIG``), so it drains and exits as on a normal stop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def exit_with_parent(environ: dict[str, str] | None = None) -> bool:
    """Under supervisord: SIGTERM this process when its parent dies. True when armed."""
    env = os.environ if environ is None else environ
    if not env.get("SUPERVISOR_ENABLED") or not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    except (OSError, AttributeError) as exc:
        log.warning("cannot ask to be stopped with supervisord: %s", exc)
        return False
    if os.getppid() != parent or parent == 1:
        # The parent died before the request took effect: act as the signal would.
        os.kill(os.getpid(), signal.SIGTERM)
    return True
