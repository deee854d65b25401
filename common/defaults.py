"""Defaults that more than one module needs, each written once.

``common/config.py`` declares every setting with its default from here; the modules whose
constructors take these values as keywords (``broker.ledger.Ledger``,
``broker.permits.PermitBook``, ``broker.core.BrokerCore``,
``workers.permit_client.BrokerPermitClient``) default to the same constants, so a unit test
that builds one by hand gets what a configured process gets — except the deficit: a ledger
built by hand is strict (``STRICT_MAX_DEFICIT``, 0), a configured broker gets ``MAX_DEFICIT``.
"""

from __future__ import annotations

LEASE_TTL_S = 150.0  # broker.lease_ttl_s: a permit unsettled after this has expired
SOFT_FLOOR = 20  # broker.soft_floor: a grant taking available below this starts recharge
RESUME_AT = 60  # broker.resume_at: recharge ends when available reaches this
# broker.max_deficit: how far below zero a grant may take available. One offers call of 20
# ASINs at its worst case (20 x 12): a grant need not wait until that is saved up, as Keepa
# itself runs any request at a positive balance. Measured with the rule as it is (the
# deficit only for a call alone in flight; bench 7's bare permit client, 20-a-minute plan,
# 4 processes): 97.5 % utilization and drain 1.02 x the limit at 0; 99.9 % and 0.99 x at
# 240; 0 x 429 either way (a grant still needs available > 0).
MAX_DEFICIT = 240
STRICT_MAX_DEFICIT = 0  # a Ledger built by hand (unit tests): never below zero
MAX_QUEUED_PER_WORKER = 8  # broker.max_queued_per_worker
DRAIN_TIMEOUT_S = 5.0  # broker.drain_timeout_s: on SIGTERM, how long permits get to settle
GRANT_WAIT_S = 600.0  # worker.grant_wait_s: how long a worker waits for a grant
REFILL_PERIOD_S = 60.0  # keepa.refill_period_s: Keepa's refill step
