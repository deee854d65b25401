"""Deal queries: what the fleet hunts, as users write them for Keepa's ``/deal``.

A *query* is a named Keepa deal selection (the JSON object ``/deal`` takes, exactly as
Keepa's deals page or a hand-written ``keepa_query.json`` has it) plus how the fleet runs it:
its ``domain``, ``priority``, ``every_s`` (scan interval), its own ``filters`` (overriding the
global ``[filters]``, including ``price_type``: which price type the drop and profit filters
judge) and an optional ``notify`` webhook. In ``fleet.toml``::

    [[queries]]
    name = "used-books"
    selection_file = "used-books.json"   # relative to fleet.toml
    every_s = 300
    [queries.filters]
    price_type = 2                        # judge USED prices

Without any ``[[queries]]`` the fleet runs one query, ``default``, equal to the selection
the pipeline always used (NEW, week, newest first, no categories, no ranges).

Every key of a selection is checked against ``SELECTION_FIELDS`` (in
``common/deal_selection.py``): the fields of the deal request of Keepa's official Java client
(``DealRequest``), with their JSON types and the ranges Keepa documents. An unknown key, a
wrong type or an out-of-range value is a ``ConfigError`` naming the file, the query and the
key (the process exits 78). Range options set without ``isRangeEnabled: true`` and filter
options without ``isFilterEnabled: true`` are ignored by Keepa: ``check_selection`` returns a
warning for each, and the loader logs it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.deal_selection import DOMAINS, INT_MAX, PRICE_TYPE_MAX, check_selection
from common.errors import ConfigError
from common.fields import coerce_setting  # the same checks as [filters]

__all__ = [
    "DOMAINS",
    "INT_MAX",
    "PRICE_TYPE_MAX",
    "Query",
    "check_selection",
    "load_queries",
    "queries_of",
]

log = logging.getLogger(__name__)

DOMAIN_HOSTS = {
    1: "amazon.com",
    2: "amazon.co.uk",
    3: "amazon.de",
    4: "amazon.fr",
    5: "amazon.co.jp",
    6: "amazon.ca",
    8: "amazon.it",
    9: "amazon.es",
    10: "amazon.in",
    11: "amazon.com.mx",
    12: "amazon.com.br",
}
DOMAIN_CURRENCIES = {
    1: "USD",
    2: "GBP",
    3: "EUR",
    4: "EUR",
    5: "JPY",
    6: "CAD",
    8: "EUR",
    9: "EUR",
    10: "INR",
    11: "MXN",
    12: "BRL",
}
SORT_NEWEST_FIRST = 1
DEAL_PAGE_COST = 5  # tokens a /deal page (docs/KEEPA.md)
DEFAULT_PAGE_LIMIT = 10  # pages a scan of a non-newest-first query reads from the top
MAX_PAGE_LIMIT = 66  # Keepa serves at most 10,000 deals a query: 67 pages of 150
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_QUERY_NAME = "default"

# What the fleet hunted before queries existed; a settings file without [[queries]] runs it.
# priceTypes [1] NEW (includes Amazon's own offer when cheapest), dateRange 1 (drops against
# the last week: steadier than the day, closer to the 90-day filter), sortType 1 newest first.
DEFAULT_SELECTION: dict[str, Any] = {"priceTypes": [1], "dateRange": 1, "sortType": 1}

# Keys of a [[queries]] table.
QUERY_KEYS = (
    "name",
    "selection_file",
    "selection",
    "domain",
    "priority",
    "every_s",
    "page_limit",
    "stale_feed_s",
    "filters",
    "notify",
)


@dataclass(frozen=True)
class Query:
    """One deal hunt. ``selection`` is sent to ``/deal`` as written, plus ``page``."""

    name: str
    selection: Mapping[str, Any]
    domain: int
    filters: Any  # common.config.FilterSettings (merged over the global [filters])
    priority: int = 0
    every_s: float = 60.0
    page_limit: int = DEFAULT_PAGE_LIMIT
    stale_feed_s: float = 86400.0
    notify: str = ""
    source: str = ""  # where it was defined (the TOML file, the selection file)
    warnings: tuple[str, ...] = ()

    @property
    def sort_type(self) -> int:
        return int(self.selection.get("sortType", SORT_NEWEST_FIRST))

    @property
    def newest_first(self) -> bool:
        return self.sort_type == SORT_NEWEST_FIRST

    @property
    def price_type(self) -> int:
        """The price type the drop and profit filters judge (``filters.price_type``)."""
        return int(self.filters.price_type)

    def page_selection(self, page: int) -> dict[str, Any]:
        """The selection of one ``/deal`` page: the user's, as written, plus ``page`` and, when
        the file did not name one, ``domainId``."""
        sel = dict(self.selection)
        sel.setdefault("domainId", self.domain)
        sel["page"] = page
        return sel

    def pages_per_scan(self) -> int:
        """Pages a scan reads at most: 1 for newest first past the first scan (it stops at
        the watermark), the page limit otherwise."""
        return 1 if self.newest_first else self.page_limit

    def tokens_per_hour(self) -> float:
        """What the scans cost an hour at ``every_s``, at most pages (newest first: one page
        a scan once it has caught up)."""
        scans = 3600.0 / max(self.every_s, 1.0)
        return scans * self.pages_per_scan() * DEAL_PAGE_COST


def load_queries(
    tables: Any,
    *,
    config_path: Path | None,
    filters: Any,
    default_domain: int,
    every_s: float,
    stale_feed_s: float,
) -> tuple[Query, ...]:
    """Build the queries of ``[[queries]]`` (a list of TOML tables; None = none given).

    ``filters`` are the global ``FilterSettings``, ``default_domain`` is ``keepa.domain`` and
    ``every_s``/``stale_feed_s`` the worker defaults. Raises ConfigError naming the file, the
    query and the key.
    """
    where_file = str(config_path) if config_path else "settings"
    if tables is None:
        return (
            Query(
                name=DEFAULT_QUERY_NAME,
                selection=dict(DEFAULT_SELECTION),
                domain=default_domain,
                filters=filters,
                every_s=every_s,
                stale_feed_s=stale_feed_s,
                source="built-in",
            ),
        )
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"{where_file}: queries", "must be [[queries]] tables (at least one)")
    out: list[Query] = []
    names: set[str] = set()
    for i, table in enumerate(tables):
        q = _one_query(
            i, table, where_file, config_path, filters, default_domain, every_s, stale_feed_s
        )
        if q.name in names:
            raise ConfigError(f"{where_file}: query {q.name!r}", "name used twice")
        names.add(q.name)
        out.append(q)
    return tuple(out)


def _one_query(
    i: int,
    table: Any,
    where_file: str,
    config_path: Path | None,
    filters: Any,
    default_domain: int,
    every_s: float,
    stale_feed_s: float,
) -> Query:
    label = f"{where_file}: query #{i + 1}"
    if not isinstance(table, dict):
        raise ConfigError(label, "must be a table")
    name = table.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(
            f"{label}: name", f"{name!r}: a name of letters, digits, '_', '-', '.' is required"
        )
    label = f"{where_file}: query {name!r}"
    for key in table:
        if key not in QUERY_KEYS:
            raise ConfigError(f"{label}: {key}", f"unknown key; known: {', '.join(QUERY_KEYS)}")
    source = where_file
    if ("selection_file" in table) == ("selection" in table):
        raise ConfigError(label, "needs exactly one of selection_file or selection")
    if "selection_file" in table:
        rel = table["selection_file"]
        if not isinstance(rel, str) or not rel:
            raise ConfigError(f"{label}: selection_file", "must be a file name")
        path = Path(rel)
        if not path.is_absolute() and config_path is not None:
            path = config_path.parent / path
        try:
            selection = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{label}: selection_file", f"no such file: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{label}: selection_file", f"cannot read {path}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{label}: selection_file", f"{path} is not valid JSON: {exc}"
            ) from None
        source = str(path)
        where = f"{path}: query {name!r}"
    else:
        selection = table["selection"]
        where = f"{label}: selection"
    warnings = check_selection(selection, where)
    domain = _query_int(label, table, "domain", None, 1, 12)
    sel_domain = selection.get("domainId")
    if domain is None:
        domain = int(sel_domain) if sel_domain is not None else default_domain
    elif sel_domain is not None and int(sel_domain) != domain:
        raise ConfigError(
            f"{label}: domain",
            f"{domain} differs from the selection's domainId {sel_domain} ({source})",
        )
    if domain not in DOMAINS:
        raise ConfigError(f"{label}: domain", f"{domain} is not a Keepa domain")
    return Query(
        name=name,
        selection=selection,
        domain=domain,
        filters=_query_filters(label, table.get("filters"), filters),
        priority=_query_int(label, table, "priority", 0, -100, 100) or 0,
        every_s=_query_float(label, table, "every_s", every_s, 1.0, 86400.0),
        page_limit=_query_int(label, table, "page_limit", DEFAULT_PAGE_LIMIT, 1, MAX_PAGE_LIMIT)
        or DEFAULT_PAGE_LIMIT,
        stale_feed_s=_query_float(label, table, "stale_feed_s", stale_feed_s, 1.0, 30 * 86400.0),
        notify=_query_url(label, table.get("notify")),
        source=source,
        warnings=tuple(warnings),
    )


def _query_int(
    label: str, table: dict[str, Any], key: str, default: int | None, lo: int, hi: int
) -> int | None:
    if key not in table:
        return default
    v = table[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{label}: {key}", f"{v!r} is not an integer")
    if not lo <= v <= hi:
        raise ConfigError(f"{label}: {key}", f"{v} is out of range {lo}..{hi}")
    return v


def _query_float(
    label: str, table: dict[str, Any], key: str, default: float, lo: float, hi: float
) -> float:
    if key not in table:
        return default
    v = table[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or v != v:
        raise ConfigError(f"{label}: {key}", f"{v!r} is not a number")
    if not lo <= v <= hi:
        raise ConfigError(f"{label}: {key}", f"{v} is out of range {lo:g}..{hi:g}")
    return float(v)


def _query_url(label: str, v: Any) -> str:
    if v is None:
        return ""
    if not isinstance(v, str) or not re.match(r"^https?://[^\s/]+", v):
        raise ConfigError(f"{label}: notify", f"{v!r} is not an http(s) URL")
    return v


def _query_filters(label: str, table: Any, base: Any) -> Any:
    if table is None:
        return base
    if not isinstance(table, dict):
        raise ConfigError(f"{label}: filters", "must be a table")
    fields = {f.name: f for f in dataclasses.fields(base)}
    values: dict[str, Any] = {}
    for key, raw in table.items():
        f = fields.get(key)
        if f is None:
            raise ConfigError(
                f"{label}: filters.{key}", f"unknown filter; known: {', '.join(fields)}"
            )
        values[key] = coerce_setting(f"{label}: filters.{key}", f, raw, label)
    return dataclasses.replace(base, **values)


# --- links, currencies, per-query figures ------------------------------------------------


def product_url(domain: int, asin: str) -> str:
    return f"https://www.{DOMAIN_HOSTS.get(domain, 'amazon.com')}/dp/{asin}"


def keepa_url(domain: int, asin: str) -> str:
    return f"https://keepa.com/#!product/{domain}-{asin}"


def currency(domain: int) -> str:
    return DOMAIN_CURRENCIES.get(domain, "")


def describe(queries: Sequence[Query], refill_rate: int | None) -> list[dict[str, Any]]:
    """One row per query for ``keepa-fleet queries``: cost an hour and share of the plan."""
    rows = []
    plan_per_hour = refill_rate * 60 if refill_rate else None
    for q in queries:
        cost = q.tokens_per_hour()
        rows.append(
            {
                "name": q.name,
                "domain": q.domain,
                "sort_type": q.sort_type,
                "scan": "watermark" if q.newest_first else f"top {q.page_limit} pages",
                "every_s": q.every_s,
                "priority": q.priority,
                "price_type": q.price_type,
                "tokens_per_hour": round(cost, 1),
                "plan_share": round(cost / plan_per_hour, 4) if plan_per_hour else None,
                "notify": bool(q.notify),
                "source": q.source,
                "warnings": list(q.warnings),
            }
        )
    return rows


def queries_of(settings: Any) -> tuple[Query, ...]:
    """The queries of ``settings`` (``Settings.queries``), else the built-in one."""
    if settings.queries:
        return tuple(settings.queries)
    return load_queries(
        None,
        config_path=None,
        filters=settings.filters,
        default_domain=settings.keepa.domain,
        every_s=settings.worker.deals_interval_s,
        stale_feed_s=settings.worker.stale_feed_s,
    )
