"""The worker: the runtime that talks to the broker, and the pipeline stages.

==========================  ==============================================================
module                      what it holds
==========================  ==============================================================
``workers.cli``             ``keepa-fleet worker``: settings, the database, then the runtime
``workers.runtime``         the process: work loop, stage choice, SIGTERM drain, exit codes
``workers.link``            the socket thread: DEALER, HELLO, heartbeats, reconnect, KILL
``workers.permit_client``   ``PermitClient`` (what stages spend tokens through) over the link
``workers.stages``          the pipeline stages: deals, ingest, refresh (``build_stages``)
``workers.filters``         the deal filters and the reasons they reject
``workers.costs``           moved to ``common.costs`` (shared with the gateway); a re-export
==========================  ==============================================================

Threads of a worker process: the work loop (main thread, runs the stages, the only one that
advances the progress counter) and the link thread (the only one that touches the socket).
"""
