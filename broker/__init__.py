"""The broker: the one owner of the Keepa token state, the permits and the worker registry.

==================  ======================================================================
module              what it holds
==================  ======================================================================
``server``          the Broker actor: one ROUTER, one poller loop, ``HANDLERS`` and the
                    ``handle_<message>`` functions, housekeeping, draining, status
``ledger``          the token ledger: observations, projection, in flight, recharge (pure)
``permits``         the permit book: queue, grants, leases, settles, expiry (pure)
``registry``        workers: HELLO, heartbeats, progress, silent and stalled detection
``killer``          killing silent and stalled workers (signals after a start-time check,
                    or a KILL message to another host)
``sync``            when to ask Keepa ``/token`` (SyncPolicy) and the thread that asks
``states``          permit and worker lifecycle states and kill reasons (no dependencies)
``metrics``         Prometheus metrics on ``broker.metrics_port``
``cli``             ``keepa-fleet broker``
``status_cli``      ``keepa-fleet status`` (and ``fetch_status`` for scripts and tests)
``keys``            ``keepa-fleet keys``: CURVE key pairs for a non-loopback broker
==================  ======================================================================
"""
