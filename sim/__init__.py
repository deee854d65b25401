"""The simulated Keepa API, for the demo, the tests and the benchmarks.

==================  ==========================================================================
module              what it holds
==================  ==========================================================================
``sim.server``      ``SimServer``: the HTTP server (threads, gzip, faults) in a background thread
``sim.api``         ``KeepaSim``: endpoints, token costs, latency, the ``/_sim/`` admin API
``sim.account``     token accounts: refill steps, cap, the acceptance rule (per-account lock)
``sim.catalog``     the deterministic, lazily generated catalog and its price dynamics
``sim.deals``       the ``/deal`` feed: selection parsing, filters, sorting, paging
``sim.faults``      injected faults: 500, delay, malformed, drop
``sim.params``      request parameters and Keepa's error statuses
``sim.rand``        seeded hashing (splitmix64): the same numbers in every process
``sim.cli``         ``keepa-fleet sim``
==================  ==========================================================================

``sim/BEHAVIOURS.md`` lists each Keepa behaviour, how the simulator reproduces it and where it
is tested.
"""
