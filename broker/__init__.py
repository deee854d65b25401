"""The broker: the one owner of the Keepa token state, the permits and the worker registry.

==================  ======================================================================
module              what it holds
==================  ======================================================================
``server``          the Broker process: lifecycle (bind, threads, drain, stop) and the loop
``core``            every decision without sockets: messages and ``now`` in, messages out
                    (housekeeping, sync decisions, draining, sends)
``handlers``        the dispatch table and one ``handle_<message>`` per message
``transport``       the ROUTER, the poller, the wake pipe, receive batching, sends
``snapshot``        the typed status snapshot (status, metrics and the summary line read it)
``ledger``          the token ledger: observations, projection, in flight, recharge (pure)
``permits``         the permit book: queue, grants, leases, settles, expiry (pure)
``registry``        workers: HELLO, heartbeats, progress, silent and stalled detection
``killer``          the whole kill path: detect -> signal (after a start-time check) or KILL
                    message to another host -> confirm -> gone
``sync``            when to ask Keepa ``/token`` (SyncPolicy) and the thread that asks
``states``          permit and worker lifecycle states and kill reasons (no dependencies)
``metrics``         Prometheus metrics on ``broker.metrics_port``
``cli``             ``keepa-fleet broker``
``status_cli``      ``keepa-fleet status`` (and ``fetch_status`` for scripts and tests)
``keys``            ``keepa-fleet keys``: CURVE key pairs for a non-loopback broker
==================  ======================================================================
"""
