"""The dashboard's ASGI application (Starlette): the deals grid, a deal's chart, the why-not
page, the live fleet panel, the exports and the guarded actions.

=========================  ===============================================================
route                      what it answers
=========================  ===============================================================
``/deals``                 the grid: one page, sorted, filtered (``web.queries.DealQuery``)
``/deals.csv|.json``       every deal of the current view (filters, sort), streamed
``/deal/{domain}/{asin}``  one deal: figures, links, the price history chart
``/whynot``                rejections by reason over time; each candidate and its reason
``/fleet``                 the live fleet panel (polls ``/api/fleet`` every second)
``/api/fleet``             the broker's status snapshot, token history, health problems
``/api/new``               how many deals were first seen after ``since``
``/api/actions/{action}``  POST: drain, restart or kill a worker (off unless enabled)
``/static/...``            uPlot and the page's script, shipped in the package
=========================  ===============================================================

Every page is rendered by Jinja2 with autoescape on; a bad parameter is a 400 naming it, an
unknown page a 404, and an unexpected error a 500 whose page shows no traceback (it goes to
the log). Database work runs in Starlette's thread pool on a read-only connection per request.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from web import queries
from web.actions import ActionError, Actions
from web.domains import domain as domain_of
from web.fleet import FleetMonitor
from web.queries import BadQuery, DealQuery, RejectionQuery

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
EXPORT_MAX_ROWS = 100_000
SEEN_COOKIE = "kf_seen"
SEEN_COOKIE_MAX_AGE_S = 365 * 86400
CSV_COLUMNS = (
    "domain",
    "asin",
    "title",
    "current",
    "avg90",
    "drop_percent",
    "sales_rank",
    "offers",
    "profit",
    "first_seen",
    "updated_at",
    "amazon_url",
    "keepa_url",
)
# Price types charted on a deal's page (index into Keepa's csv): Amazon, new, used.
CHART_SERIES = ((0, "Amazon"), (1, "New"), (2, "Used"))
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass
class WebConfig:
    """What the app serves: the database file, the fleet monitor, the action gate."""

    db: Path
    monitor: FleetMonitor | None = None
    actions: Actions = field(default_factory=Actions)
    broker: str = ""


def create_app(config: WebConfig) -> Starlette:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["domain_of"] = domain_of
    env.filters["when"] = _when
    env.filters["number"] = _number

    def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("page_name", name.removesuffix(".html"))
        context.setdefault("actions_enabled", config.actions.enabled)
        html = env.get_template(name).render(request=request, **context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    @contextlib.contextmanager
    def database(*, any_thread: bool = False) -> Iterator[sqlite3.Connection | None]:
        """A read-only connection, or None when no worker has created the database yet."""
        try:
            conn = queries.connect(config.db, any_thread=any_thread)
        except FileNotFoundError:
            yield None
            return
        try:
            yield conn
        finally:
            conn.close()

    # --- the deals grid ------------------------------------------------------------------

    def deals(request: Request) -> Response:
        q = DealQuery.parse(dict(request.query_params))
        now = time.time()
        seen_at = _cookie_time(request.cookies.get(SEEN_COOKIE))
        rows: list[dict[str, Any]] = []
        total = new = 0
        with database() as conn:
            if conn is not None:
                rows, total = queries.deals_page(conn, q)
                new = queries.new_since(conn, seen_at) if seen_at is not None else 0
        pages = max(1, -(-total // q.size))
        response = render(
            request,
            "deals.html",
            q=q,
            rows=rows,
            total=total,
            pages=pages,
            params=_view_params(q),
            new_since_looked=new,
            seen_at=seen_at,
            rendered_at=now,
            db_missing=not config.db.is_file(),
            db=str(config.db),
        )
        response.set_cookie(
            SEEN_COOKIE, f"{now:.3f}", max_age=SEEN_COOKIE_MAX_AGE_S, samesite="strict"
        )
        return response

    def export(request: Request) -> Response:
        fmt = request.path_params["fmt"]
        params = {k: v for k, v in request.query_params.items() if k not in ("page", "size")}
        q = DealQuery.parse(params)
        name = f"deals-{time.strftime('%Y%m%d-%H%M%S')}.{fmt}"
        headers = {"Content-Disposition": f'attachment; filename="{name}"', **SECURITY_HEADERS}
        if fmt not in ("csv", "json"):
            raise HTTPException(404, "exports are /deals.csv and /deals.json")

        def rows() -> Iterator[dict[str, Any]]:
            with database(any_thread=True) as conn:
                if conn is None:
                    return
                for row in queries.deals_export(conn, q, EXPORT_MAX_ROWS):
                    d = domain_of(int(row["domain"]))
                    row["amazon_url"] = d.amazon_url(row["asin"])
                    row["keepa_url"] = d.keepa_url(row["asin"])
                    yield row

        chunks = _csv_chunks(rows()) if fmt == "csv" else _json_chunks(rows())
        return _export_response(fmt, chunks, headers)

    def new_deals(request: Request) -> Response:
        params = dict(request.query_params)
        unknown = sorted(set(params) - {"since"})
        if unknown:
            raise BadQuery(f"unknown parameter {unknown[0]!r}; known: since")
        since = _cookie_time(params.get("since"))
        if since is None:
            raise BadQuery("since must be a time in epoch seconds")
        with database() as conn:
            n = 0 if conn is None else queries.new_since(conn, since)
        return JSONResponse({"since": since, "new": n}, headers=SECURITY_HEADERS)

    # --- one deal ------------------------------------------------------------------------

    def deal(request: Request) -> Response:
        if request.query_params:
            raise BadQuery("a deal's page takes no parameters")
        try:
            domain_id = int(request.path_params["domain"])
        except ValueError:
            raise BadQuery("the domain must be Keepa's domain number, e.g. 1") from None
        asin = str(request.path_params["asin"])
        if not asin.isalnum() or len(asin) > 20:
            raise BadQuery("an ASIN is up to 20 letters and digits")
        with database() as conn:
            row = None if conn is None else queries.deal(conn, domain_id, asin)
        if row is None:
            raise HTTPException(404, f"no deal {asin} on domain {domain_id}")
        history = _json_or_none(row.pop("history", None))
        d = domain_of(domain_id)
        chart = _chart_data(history, int(row.get("price_type") or 1))
        return render(
            request,
            "deal.html",
            deal=row,
            d=d,
            chart={"currency": d.currency, "decimals": d.decimals, **chart},
            points=chart["points"],
        )

    # --- why not -------------------------------------------------------------------------

    def whynot(request: Request) -> Response:
        q = RejectionQuery.parse(dict(request.query_params))
        size_s = queries.BUCKETS_S[q.bucket]
        breakdown: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        total = 0
        with database() as conn:
            if conn is not None:
                breakdown = queries.rejection_breakdown(conn, size_s)
                rows, total = queries.rejections_page(conn, q.reason or None, q.page, q.size)
        reasons = sorted({b["reason"] for b in breakdown})
        buckets = _contiguous(sorted({int(b["bucket"]) for b in breakdown}), size_s)
        counts = {(b["reason"], int(b["bucket"])): int(b["n"]) for b in breakdown}
        chart = {
            "x": buckets,
            "series": [
                {"label": r, "values": [counts.get((r, t), 0) for t in buckets]} for r in reasons
            ],
        }
        totals = {r: sum(counts.get((r, t), 0) for t in buckets) for r in reasons}
        return render(
            request,
            "whynot.html",
            q=q,
            rows=rows,
            total=total,
            pages=max(1, -(-total // q.size)),
            reasons=reasons,
            totals=totals,
            chart=chart,
            buckets=list(queries.BUCKETS_S),
        )

    # --- the fleet -----------------------------------------------------------------------

    def fleet(request: Request) -> Response:
        if request.query_params:
            raise BadQuery("the fleet page takes no parameters")
        return render(request, "fleet.html", broker=config.broker)

    def fleet_api(request: Request) -> Response:
        if request.query_params:
            raise BadQuery("/api/fleet takes no parameters")
        if config.monitor is None:
            view: dict[str, Any] = {
                "answered": False,
                "state": None,
                "history": [],
                "problems": ["this dashboard was started without a broker"],
            }
        else:
            view = config.monitor.view()
        view["actions_enabled"] = config.actions.enabled
        return JSONResponse(view, headers={"Cache-Control": "no-store", **SECURITY_HEADERS})

    async def action(request: Request) -> Response:
        name = request.path_params["action"]
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        worker = body.get("worker") if isinstance(body, dict) else None
        try:
            # supervisord's answer can take seconds: not on the event loop.
            from starlette.concurrency import run_in_threadpool

            text = await run_in_threadpool(
                config.actions.run, name, str(worker or ""), request.headers.get("authorization")
            )
        except ActionError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        log.info("action from %s: %s", request.client.host if request.client else "?", text)
        return JSONResponse({"ok": True, "message": text})

    def home(request: Request) -> Response:
        return RedirectResponse("/deals", status_code=303)

    # --- errors --------------------------------------------------------------------------

    def wants_json(request: Request) -> bool:
        path = request.url.path
        return path.startswith("/api/") or path.endswith((".json", ".csv"))

    def error(request: Request, status: int, message: str) -> Response:
        if wants_json(request):
            return JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS)
        return render(request, "error.html", status=status, code=status, message=message)

    async def bad_query(request: Request, exc: Exception) -> Response:
        return error(request, 400, str(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        status = int(getattr(exc, "status_code", 500))
        detail = str(getattr(exc, "detail", "") or "")
        if status == 404 and detail == "Not Found":
            detail = f"no page at {request.url.path}"
        return error(request, status, detail or "refused")

    async def db_error(request: Request, exc: Exception) -> Response:
        log.warning("database read failed on %s: %s", request.url.path, exc)
        return error(request, 503, "the database is busy or unreadable; try again in a moment")

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("error on %s", request.url.path, exc_info=exc)
        return error(request, 500, "internal error (it is in the dashboard's log)")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if config.monitor is not None:
            config.monitor.start()
        try:
            yield
        finally:
            if config.monitor is not None:
                config.monitor.stop()

    routes = [
        Route("/", home),
        Route("/deals", deals),
        Route("/deals.{fmt:str}", export),
        Route("/deal/{domain}/{asin}", deal),
        Route("/whynot", whynot),
        Route("/fleet", fleet),
        Route("/api/fleet", fleet_api),
        Route("/api/new", new_deals),
        Route("/api/actions/{action}", action, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            BadQuery: bad_query,
            HTTPException: http_error,
            sqlite3.Error: db_error,
            Exception: server_error,
        },
    )
    app.state.config = config
    return app


# --- helpers ------------------------------------------------------------------------------


def _export_response(fmt: str, chunks: Iterator[str], headers: dict[str, str]) -> Response:
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/json"
    return StreamingResponse(chunks, media_type=media, headers=headers)


def _csv_chunks(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for i, row in enumerate(rows, 1):
        writer.writerow({k: _csv_safe(row.get(k)) for k in CSV_COLUMNS})
        if i % 500 == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def _csv_safe(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula gets a leading quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _json_chunks(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    yield '{"deals": ['
    for i, row in enumerate(rows):
        yield ("," if i else "") + json.dumps(row, separators=(",", ":"))
    yield "]}"


def _view_params(q: DealQuery) -> dict[str, str]:
    """The view's parameters as a query string dict (for links that keep the view)."""
    params: dict[str, str] = {}
    if q.sort != "profit":
        params["sort"] = q.sort
    if not q.descending:
        params["order"] = "asc"
    if q.size != queries.PAGE_SIZE_DEFAULT:
        params["size"] = str(q.size)
    if q.search:
        params["q"] = q.search
    if q.category is not None:
        params["category"] = str(q.category)
    if q.domain is not None:
        params["domain"] = str(q.domain)
    for name, value in q.filters:
        params[name] = f"{value:g}"
    return params


def _chart_data(history: Any, price_type: int) -> dict[str, Any]:
    """uPlot's shape: one x array (unix seconds) shared by every series (None where a series
    has no point), from the stored Keepa csv history."""
    wanted = list(CHART_SERIES)
    if price_type not in {t for t, _ in wanted}:
        wanted.append((price_type, f"price type {price_type}"))
    per: list[tuple[str, dict[int, int | None]]] = []
    stored = 0
    for ptype, label in wanted:
        try:
            points = queries.price_series(history if isinstance(history, list) else None, ptype)
        except (TypeError, ValueError, IndexError):  # a malformed stored history: no chart
            points = []
        if points:
            stored += len(points)
            per.append((label, {ms // 1000: price for ms, price in points}))
    xs = sorted({t for _, pts in per for t in pts})
    series = []
    for label, pts in per:
        values: list[int | None] = []
        last: int | None = None
        for t in xs:
            # A price holds until its next change: carry it forward between changes.
            if t in pts:
                last = pts[t]
            values.append(last)
        series.append({"label": label, "values": values})
    return {"x": xs, "series": series, "points": stored}


MAX_CHART_BUCKETS = 2000


def _contiguous(buckets: list[int], size_s: int) -> list[int]:
    """Every bucket from the first to the last (a bucket without rejections is a 0, not a
    gap), with one empty bucket before a lone one so the chart has a width; the buckets as
    they are when filling would make more than ``MAX_CHART_BUCKETS``."""
    if not buckets:
        return []
    if len(buckets) == 1:
        return [buckets[0] - size_s, buckets[0]]
    span = (buckets[-1] - buckets[0]) // size_s + 1
    if span > MAX_CHART_BUCKETS:
        return buckets
    return list(range(buckets[0], buckets[-1] + size_s, size_s))


def _json_or_none(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _cookie_time(raw: str | None) -> float | None:
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if 0 <= value < 4e9 else None


def _when(epoch: Any) -> str:
    if not isinstance(epoch, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _number(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)
