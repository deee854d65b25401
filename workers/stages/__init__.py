"""Pipeline stages: what a worker does between permits.

==========  ============================  ==============================================
stage       module                        one batch (``run_once``)
==========  ============================  ==============================================
deals       ``workers.stages.deals``      one ``/deal`` page, newest first; new ASINs
                                          queued as candidates, up to the watermark
ingest      ``workers.stages.ingest``     claim candidates, peek them in one
                                          ``/product`` call, filter, commit survivors in
                                          sub-batches with full data
refresh     ``workers.stages.refresh``    claim the stalest deals, one light
                                          ``/product`` call, rewrite or drop each
==========  ============================  ==============================================

``build_stages(role, ...)`` returns the stages of a role (``all``: the three). What the
stages share (``Stage``, ``Pipeline``, priorities, urgency, ``judge``) is in
``workers/pipeline.py``; its names are re-exported here for the callers that import them
from the package.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from common.config import Settings
from common.costs import LIGHT_COST_PER_PRODUCT, ProductCostModel, offers_bound_per_product
from common.keepa import KeepaClient
from common.storage import Storage
from workers.pipeline import (
    PRIORITY_COMMIT,
    PRIORITY_DEALS,
    PRIORITY_PEEK,
    PRIORITY_REFRESH,
    ROLES,
    URGENCY_NONE,
    Pipeline,
    Stage,
    deal_row,
    default_owner,
    judge,
    products_of,
)
from workers.stages.deals import DealsStage
from workers.stages.ingest import IngestStage
from workers.stages.refresh import RefreshStage

if TYPE_CHECKING:
    from workers.permit_client import PermitClient

__all__ = [
    "PRIORITY_COMMIT",
    "PRIORITY_DEALS",
    "PRIORITY_PEEK",
    "PRIORITY_REFRESH",
    "ROLES",
    "URGENCY_NONE",
    "Pipeline",
    "Stage",
    "build_stages",
    "deal_row",
    "judge",
    "products_of",
]


def build_stages(
    role: str,
    settings: Settings,
    keepa: KeepaClient,
    permits: PermitClient,
    storage: Storage,
    *,
    owner: str | None = None,
    clock: Callable[[], float] = time.time,
) -> list[Stage]:
    """The stages of ``role`` (deals, ingest, refresh or all), sharing one cost model.

    ``owner`` names this worker's claims in the database: the worker id (default: the
    permit client's ``worker_id`` when it has one, else ``host:pid``).
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    owner = owner or getattr(permits, "worker_id", None) or default_owner()
    ctx = Pipeline(
        settings=settings,
        keepa=keepa,
        permits=permits,
        storage=storage,
        owner=str(owner),
        costs=ProductCostModel(
            settings.worker.cost_per_product,
            bound_per_product=offers_bound_per_product(settings.worker.offers),
        ),
        light_costs=ProductCostModel(
            LIGHT_COST_PER_PRODUCT, bound_per_product=LIGHT_COST_PER_PRODUCT
        ),
        clock=clock,
    )
    makers: dict[str, Callable[[Pipeline], Stage]] = {
        "deals": DealsStage,
        "ingest": IngestStage,
        "refresh": RefreshStage,
    }
    names: Sequence[str] = list(makers) if role == "all" else [role]
    return [makers[name](ctx) for name in names]
