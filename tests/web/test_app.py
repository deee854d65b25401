"""The dashboard over real HTTP (uvicorn on port 0) against a real SQLite file: pages, bad
input, escaping, exports, the new-deals notice, the fleet API and the action gate."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from support import wait_until

from web.actions import Actions
from web.app import WebConfig
from web.fleet import FleetMonitor, health_problems

TOKEN = "s3cret-token-0123456789"
EVIL_TITLE = "<script>window.__pwned = 1</script> & <b>bold</b>"  # as in conftest


def test_pages_load(live: Any) -> None:
    assert live.get("/").headers["location"] == "/deals"
    for path in ("/deals", "/deal/1/B000000003", "/whynot", "/fleet"):
        r = live.get(path)
        assert r.status_code == 200, path
        assert "Content-Security-Policy" in r.headers
    static = live.get("/static/uPlot.iife.min.js")
    assert static.status_code == 200 and "uPlot" in static.text


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/nope", 404, "no page at /nope"),
        ("/deals/extra/bits", 404, "no page"),
        ("/deals?sort=title;drop", 400, "sort must be one of"),
        ("/deals?page=-1", 400, "page must be between"),
        ("/deals?min_profit=abc", 400, "min_profit must be a number"),
        ("/deals?bogus=1", 400, "unknown parameter"),
        ("/deals?q=" + "x" * 101, 400, "longer than"),
        ("/deals.xml", 404, "exports are"),
        ("/deals.csv?order=up", 400, "order must be"),
        ("/deal/one/B000000001", 400, "domain must be"),
        ("/deal/1/B0000%27--", 400, "ASIN"),
        ("/deal/1/B999999999", 404, "no deal B999999999"),
        ("/whynot?bucket=week", 400, "bucket must be one of"),
        ("/api/new?since=yesterday", 400, "since must be"),
        ("/api/fleet?x=1", 400, "takes no parameters"),
    ],
)
def test_bad_input_is_a_clear_4xx(live: Any, path: str, status: int, says: str) -> None:
    r = live.get(path)
    assert r.status_code == status, r.text
    assert says in r.text
    assert "Traceback" not in r.text and 'File "' not in r.text


def test_sql_ish_search_finds_nothing_and_harms_nothing(live: Any, deals_db: Path) -> None:
    r = live.get("/deals", params={"q": "'; DROP TABLE deals; --"})
    assert r.status_code == 200
    assert 'id="no-deals"' in r.text
    r = live.get("/deals", params={"q": "thing 1", "sort": "profit"})
    assert 'data-asin="B000000001"' in r.text
    assert live.get("/deals.json").json()["deals"].__len__() == 30


def test_every_value_is_escaped(live: Any) -> None:
    for path in ("/deals", "/deal/1/B000000003", "/deals?q=%3Cscript%3E"):
        html = live.get(path).text
        assert "<script>window.__pwned" not in html, path
    assert "&lt;script&gt;window.__pwned" in live.get("/deals").text
    whynot = live.get("/whynot").text
    assert "<img src=x" not in whynot and "&lt;img src=x" in whynot
    # The title inside the chart's JSON block cannot close the block either.
    r = live.get("/deal/1/B000000003")
    assert "</script>" not in r.text.split('id="chart-data">', 1)[1].split("</script>", 1)[0]
    # An error message quoting the input is escaped too.
    r = live.get("/deals", params={"sort": "<script>x</script>"})
    assert r.status_code == 400 and "<script>x" not in r.text and "&lt;script&gt;x" in r.text


def test_sorting_paging_and_filters(live: Any) -> None:
    def profits(params: dict[str, str]) -> list[int]:
        rows = live.get("/deals.json", params=params).json()["deals"]
        return [r["profit"] for r in rows]

    desc = profits({"sort": "profit"})
    assert desc == sorted(desc, reverse=True) and len(desc) == 30
    assert profits({"sort": "profit", "order": "asc"}) == sorted(desc)
    page2 = live.get("/deals", params={"size": "10", "page": "2"}).text
    assert "Page 2 of 3" in page2
    only = live.get("/deals.json", params={"min_drop": "40", "max_offers": "3"}).json()["deals"]
    assert only and all(r["drop_percent"] >= 40 and r["offers"] <= 3 for r in only)


def test_exports_follow_the_view(live: Any) -> None:
    r = live.get("/deals.csv", params={"min_drop": "40", "sort": "rank", "order": "asc"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert rows and all(float(x["drop_percent"]) >= 40 for x in rows)
    ranks = [int(x["sales_rank"]) for x in rows]
    assert ranks == sorted(ranks)
    assert rows[0]["amazon_url"] == f"https://www.amazon.com/dp/{rows[0]['asin']}"
    assert rows[0]["keepa_url"] == f"https://keepa.com/#!product/1-{rows[0]['asin']}"
    data = live.get("/deals.json", params={"q": "pwned"}).json()
    assert [d["title"] for d in data["deals"]] == [EVIL_TITLE]


def test_links_and_currency(tmp_path: Path, db_maker: Any, server: Any) -> None:
    from common.storage import Storage

    db = db_maker(tmp_path / "fleet.db")
    with Storage.open(db) as s:
        s.commit_deals(3, [{"asin": "B0DE000001", "title": "Ding", "current": 1234}], now=5.0)
    with server(WebConfig(db=db)) as live:
        html = live.get("/deals", params={"domain": "3"}).text
        assert "https://www.amazon.de/dp/B0DE000001" in html
        assert "https://keepa.com/#!product/3-B0DE000001" in html
        assert "€12.34" in html
        chart = live.get("/deal/1/B000000003").text.split('id="chart-data">', 1)[1]
        data = json.loads(chart.split("</script>", 1)[0])
        # Keepa minute 7,000,000 is 2024-04-23 02:40 UTC (minutes since 2011-01-01).
        assert data["x"][0] == (7_000_000 + 21_564_000) * 60
        assert data["currency"] == "USD"


def test_new_deals_since_you_looked(tmp_path: Path, db_maker: Any, server: Any) -> None:
    from common.storage import Storage

    db = db_maker(tmp_path / "fleet.db", now=1000.0)
    with server(WebConfig(db=db)) as live:
        first = live.get("/deals", cookies={"kf_seen": "2000"})
        assert 'id="new-deals"' in first.text and "new deals since you looked" not in first.text
        seen = first.cookies["kf_seen"]
        with Storage.open(db) as s:
            s.commit_deals(1, [{"asin": "BNEW000001", "title": "fresh"}], now=float(seen) + 1)
        again = live.get("/deals", cookies={"kf_seen": seen})
        assert "1 new deals since you looked" in again.text
        assert live.get("/api/new", params={"since": seen}).json()["new"] == 1


def test_missing_database_is_not_an_error(tmp_path: Path, server: Any) -> None:
    with server(WebConfig(db=tmp_path / "none.db")) as live:
        r = live.get("/deals")
        assert r.status_code == 200 and 'id="no-db"' in r.text
        assert live.get("/deals.json").json() == {"deals": []}
        assert live.get("/whynot").status_code == 200


def test_fleet_api_is_the_status_snapshot(deals_db: Path, server: Any) -> None:
    state = {
        "tokens": {"now": 321, "available": 300, "in_flight": 21, "soft_floor": 50},
        "permits": {"queued": 2, "oldest_wait_s": 1.5},
        "workers": [{"id": "w0", "state": "alive", "heartbeat_age_s": 0.1}],
        "kills": [{"worker": "w9", "reason": "stalled"}],
    }
    monitor = FleetMonitor(lambda: state, every_s=0.05)
    with server(WebConfig(db=deals_db, monitor=monitor)) as live:
        view = wait_until(
            lambda: live.get("/api/fleet").json()["history"] and live.get("/api/fleet").json(),
            10,
            message="a sample",
        )
    assert view["answered"] and view["state"]["tokens"]["now"] == 321
    assert view["history"][-1]["now"] == 321 and view["history"][-1]["soft_floor"] == 50
    assert view["actions_enabled"] is False
    silent = FleetMonitor(lambda: None, every_s=0.05)
    with server(WebConfig(db=deals_db, monitor=silent)) as live:
        view = wait_until(
            lambda: live.get("/api/fleet").json()["polls"] and live.get("/api/fleet").json(),
            10,
            message="a poll",
        )
    assert not view["answered"] and "not answered" in view["problems"][0]


def test_health_problems() -> None:
    assert health_problems(None, None) == ["the broker has not answered yet (starting, or down)"]
    assert "12 s" in health_problems(None, 12.0)[0]
    ok = {"tokens": {"now": 5}, "settings": {"heartbeat_s": 1.0}, "workers": []}
    assert health_problems(ok, 0.0) == []
    bad = {
        "tokens": {"now": 5, "recharge_mode": True, "unaccounted": 7, "soft_floor": 100},
        "keepa": {"status_429": 2},
        "settings": {"heartbeat_s": 1.0},
        "workers": [{"id": "w1", "state": "alive", "heartbeat_age_s": 30.0}],
        "health": {"problems": ["storage: disk full"]},
    }
    text = "\n".join(health_problems(bad, 0.0))
    for needle in ("recharge mode", "429 2", "7 tokens", "w1: no heartbeat", "disk full"):
        assert needle in text
    as_dicts = {"health": [{"component": "storage", "message": "locked"}], "tokens": {"now": 1}}
    assert health_problems(as_dicts, 0.0) == ["storage: locked"]


class Recorder:
    """A stand-in supervisord that records what it was asked (the real one is in
    test_actions_supervisord)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def names(self) -> list[str]:
        return ["worker_00", "worker_01"]

    def stop(self, name: str) -> None:
        self.calls.append(("stop", name))

    def start(self, name: str) -> None:
        self.calls.append(("start", name))

    def signal(self, name: str, sig: str) -> None:
        self.calls.append((sig, name))


def test_actions_are_off_by_default(live: Any) -> None:
    r = live.post("/api/actions/kill", json={"worker": "worker_00"})
    assert r.status_code == 403 and "actions are off" in r.json()["error"]
    assert "data-action" not in live.get("/fleet").text


def test_actions_need_the_token(deals_db: Path, server: Any) -> None:
    sup = Recorder()
    config = WebConfig(db=deals_db, actions=Actions(token=TOKEN, supervisor=sup))
    with server(config) as live:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        no = live.post("/api/actions/kill", json={"worker": "worker_00"})
        wrong = live.post(
            "/api/actions/kill", json={"worker": "worker_00"}, headers={"Authorization": "Bearer x"}
        )
        assert no.status_code == wrong.status_code == 401 and sup.calls == []
        assert (
            live.post("/api/actions/explode", json={"worker": "w"}, headers=auth).status_code == 404
        )
        assert (
            live.post("/api/actions/kill", json={"worker": "nobody"}, headers=auth).status_code
            == 404
        )
        assert live.post("/api/actions/kill", data="{not json", headers=auth).status_code == 400
        r = live.post("/api/actions/restart", json={"worker": "worker_01"}, headers=auth)
        assert r.status_code == 200, r.text
        live.post("/api/actions/kill", json={"worker": "worker_00"}, headers=auth)
        live.post("/api/actions/drain", json={"worker": "worker_00"}, headers=auth)
    assert sup.calls == [
        ("stop", "worker_01"),
        ("start", "worker_01"),
        ("KILL", "worker_00"),
        ("stop", "worker_00"),
    ]


def test_the_page_never_reads_the_whole_table(
    tmp_path: Path, db_maker: Any, server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every statement that reads deal rows for a page has a LIMIT (or only counts); the
    statements are those SQLite actually ran (its trace callback)."""
    from web import queries

    statements: list[str] = []
    real_connect = queries.connect

    def traced(path: Any, **kwargs: Any) -> Any:
        conn = real_connect(path, **kwargs)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(queries, "connect", traced)
    db = db_maker(tmp_path / "fleet.db", n=120)
    with server(WebConfig(db=db)) as live:
        for params in ({}, {"sort": "drop", "page": "2"}, {"q": "thing", "min_drop": "5"}):
            r = live.get("/deals", params=params)
            assert r.status_code == 200 and r.text.count('class="deal"') <= 50
        live.get("/deal/1/B000000003")
    reads = [s for s in statements if "FROM deals" in s]
    assert reads, "no statement traced"
    for sql in reads:
        one_row = "WHERE domain = 1 AND asin = " in sql  # the primary key: one row
        assert "LIMIT" in sql or "count(*)" in sql or one_row, sql


def test_an_unreadable_database_is_a_clear_error(tmp_path: Path, server: Any) -> None:
    junk = tmp_path / "fleet.db"
    junk.write_bytes(b"this is not an SQLite file at all" * 100)
    with server(WebConfig(db=junk)) as live:
        for path in ("/deals", "/whynot", "/api/new?since=0"):
            r = live.get(path)
            assert r.status_code == 503, (path, r.status_code)
            assert "database is busy or unreadable" in r.text and "Traceback" not in r.text


def test_whynot_counts_by_reason_and_bucket(live: Any) -> None:
    html = live.get("/whynot", params={"bucket": "minute"}).text
    data = json.loads(html.split('id="reasons-data">', 1)[1].split("</script>", 1)[0])
    # Both rejections (at t=1,000,010) fall in one minute; an empty minute before it.
    assert data["x"] == [1_000_010 // 60 * 60 - 60, 1_000_010 // 60 * 60]
    assert {s["label"]: s["values"] for s in data["series"]} == {
        "max_rank": [0, 1],
        "min_drop": [0, 1],
    }
    only = live.get("/whynot", params={"reason": "min_drop"}).text
    assert "X000000001" in only and "X000000002" not in only
