"""Shared pieces of keepa-fleet.

- ``common.protocol`` - the whole wire format between broker, workers and the status tool
- ``common.errors``   - the one error hierarchy
- ``common.config``   - settings from TOML and the environment
- ``common.keepa``    - the Keepa HTTP client and the token envelope
- ``common.storage``  - the SQLite database (candidates, deals, rejections)
- ``common.procinfo`` - process start times, for safe kills
- ``common.log``      - logging to stdout/stderr for supervisord
- ``common.cli``      - the ``keepa-fleet`` command and its subcommands
"""
