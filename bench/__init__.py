"""Benchmarks of keepa-fleet: ``python -m bench --profile quick|full [--only NAME]`` (``make
bench`` / ``make bench-full``) runs them and rewrites ``BENCHMARKS.md``.

=================  =========================================================================
module             what
=================  =========================================================================
``utilization``    1. token utilization on one account: fleet vs the unmodified ``keepa``
``capacity``       2. broker permits/s and round trip beside a bare pyzmq ROUTER echo loop
``scaling``        3. ASINs/s with 1..16 workers when each Keepa call takes seconds
``heartbeats``     4. broker CPU and RSS with 500 registered workers heartbeating at 1 Hz
``soak_report``    5. (full profile) the soak of ``soak``: fault scenarios, long fuzzing
``backlog``        one run of a fixed ASIN backlog by the fleet or by the peer (1 and 3)
``harness``        processes, the simulator and broker as subprocesses, /proc, statistics
``peer``           a peer process: the ``keepa`` package, its HTTP redirected in one place
``fleet_worker``   a fleet process: the worker runtime's permit client + ``KeepaClient``
``capacity_client``, ``echo_server``, ``hb_holder``: the other child programs
=================  =========================================================================

The benchmark-only dependency (``keepa``) is in ``bench/requirements.txt``.
"""
