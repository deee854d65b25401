"""Logging for processes run under supervisord: lines on stderr, never files of our own."""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)-7s %(name)s[%(process)d]: %(message)s"


def setup_logging(level: str | None = None, *, stream: object = None) -> None:
    """Configure the root logger once per process. ``FLEET_LOG_LEVEL`` sets the default."""
    level = (level or os.environ.get("FLEET_LOG_LEVEL") or "INFO").upper()
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # requests/urllib3 log full URLs (with the API key) at DEBUG: keep them quiet.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
