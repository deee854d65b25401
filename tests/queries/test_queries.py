"""Deal queries (issue 19): validation of [[queries]] and selection files, the CLI's exit 78,
a USED hunt judged on USED prices, and a query sent to the real simulator as written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from common.config import load_settings
from common.errors import ConfigError
from common.keepa import KeepaClient
from common.queries import check_selection, queries_of
from workers.filters import check, facts

ISSUE_QUERY = {
    "domainId": "1",
    "includeCategories": [283155],
    "priceTypes": [2],
    "deltaPercentRange": [10, 2147483647],
    "salesRankRange": [10000, 10000000],
    "currentRange": [2000, 45100],
    "isRangeEnabled": True,
    "isFilterEnabled": True,
    "singleVariation": True,
    "sortType": 4,
    "dateRange": 4,
    "warehouseConditions": [2, 3, 4, 5],
}


def write(tmp: Path, selection: Any, extra: str = "") -> Path:
    (tmp / "q.json").write_text(json.dumps(selection))
    cfg = tmp / "fleet.toml"
    cfg.write_text(f'[[queries]]\nname = "books"\nselection_file = "q.json"\n{extra}')
    return cfg


def test_no_queries_is_the_built_in_selection(tmp_path: Path) -> None:
    (q,) = queries_of(load_settings(env={}))
    assert q.name == "default" and q.newest_first
    assert q.page_selection(0) == {
        "priceTypes": [1],
        "dateRange": 1,
        "sortType": 1,
        "domainId": 1,
        "page": 0,
    }


def test_the_issue_query_loads_as_written(tmp_path: Path) -> None:
    cfg = write(tmp_path, ISSUE_QUERY, "every_s = 300\n[queries.filters]\nprice_type = 2\n")
    (q,) = load_settings(cfg, env={}).queries
    assert q.domain == 1 and q.price_type == 2 and q.every_s == 300 and not q.newest_first
    assert q.page_selection(3) == {**ISSUE_QUERY, "page": 3}
    assert q.warnings == ()


@pytest.mark.parametrize(
    ("selection", "key", "words"),
    [
        ({**ISSUE_QUERY, "salesRankRagne": [1, 2]}, "salesRankRagne", "salesRankRange"),
        ({**ISSUE_QUERY, "sortType": "newest"}, "sortType", "not an integer"),
        ({**ISSUE_QUERY, "isRangeEnabled": "yes"}, "isRangeEnabled", "not true or false"),
        ({**ISSUE_QUERY, "sortType": 5}, "sortType", "out of Keepa's range"),
        ({**ISSUE_QUERY, "dateRange": 9}, "dateRange", "out of Keepa's range"),
        ({**ISSUE_QUERY, "domainId": 7}, "domainId", "out of Keepa's range"),
        ({**ISSUE_QUERY, "priceTypes": [1, 2]}, "priceTypes", "exactly 1"),
        ({**ISSUE_QUERY, "currentRange": [500, 100]}, "currentRange", "above the maximum"),
        ({**ISSUE_QUERY, "warehouseConditions": [9]}, "warehouseConditions", "out of"),
    ],
)
def test_each_bad_key_stops_naming_file_query_and_key(
    tmp_path: Path, selection: dict[str, Any], key: str, words: str
) -> None:
    cfg = write(tmp_path, selection)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env={})
    text = str(err.value)
    assert "q.json" in text and "'books'" in text and key in text and words in text, text


def test_bad_query_table_keys(tmp_path: Path) -> None:
    for extra, key in (
        ("evry_s = 3\n", "evry_s"),
        ("every_s = 0\n", "every_s"),
        ("[queries.filters]\nprice_typ = 2\n", "filters.price_typ"),
        ('notify = "ftp://x"\n', "notify"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_settings(write(tmp_path, ISSUE_QUERY, extra), env={})


def test_options_without_their_switch_warn(tmp_path: Path) -> None:
    sel = {k: v for k, v in ISSUE_QUERY.items() if k not in ("isRangeEnabled", "isFilterEnabled")}
    warnings = check_selection(sel, "q.json: query 'books'")
    assert len(warnings) == 2
    assert "currentRange" in warnings[0] and "isRangeEnabled" in warnings[0]
    assert "singleVariation" in warnings[1] and "isFilterEnabled" in warnings[1]
    assert "Keepa ignores them" in warnings[0]


def test_the_cli_exits_78_on_a_typo(tmp_path: Path) -> None:
    cfg = write(tmp_path, {**ISSUE_QUERY, "salesRankRagne": [1, 2]})
    done = subprocess.run(
        [sys.executable, "-m", "common.cli", "--config", str(cfg), "queries"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 78, done.stderr
    assert "q.json" in done.stderr and "books" in done.stderr and "salesRankRagne" in done.stderr


def test_the_cli_prints_cost_and_plan_share(tmp_path: Path) -> None:
    cfg = write(tmp_path, ISSUE_QUERY, "every_s = 300\n")
    done = subprocess.run(
        [sys.executable, "-m", "common.cli", "--config", str(cfg), "queries", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "FLEET_SIM_REFILL_RATE": "20"},
    )
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)["queries"]
    # 12 scans an hour x 10 pages x 5 tokens, of a 20/min plan (1200 an hour).
    assert row["tokens_per_hour"] == 600 and row["plan_share"] == 0.5


def product(new: int, used: int, avg_new: int, avg_used: int) -> dict[str, Any]:
    cur = [-1] * 19
    cur[1], cur[2], cur[3], cur[11], cur[12] = new, used, 5000, 3, 2
    avg = [-1] * 19
    avg[1], avg[2] = avg_new, avg_used
    return {"asin": "B000000001", "stats": {"current": cur, "avg90": avg}}


def test_a_used_hunt_judges_used_prices(tmp_path: Path) -> None:
    cfg = write(tmp_path, ISSUE_QUERY, "[queries.filters]\nprice_type = 2\n")
    (q,) = load_settings(cfg, env={}).queries
    # NEW barely dropped (5 %), USED dropped 50 %: the USED hunt keeps it, a NEW one does not.
    p = product(new=9500, used=1000, avg_new=10000, avg_used=2000)
    assert check(facts(p, q.price_type), q.filters) is None
    failure = check(facts(p, 1), q.filters)
    assert failure is not None and failure.filter == "drop"
    f = facts(p, q.price_type)
    assert (f.current, f.avg90, f.offers) == (1000, 2000, 2)  # used offers counted


def test_a_category_and_ranges_query_reaches_the_simulator_as_written(tmp_path: Path) -> None:
    from sim import server

    sel = {
        "domainId": 1,
        "includeCategories": [172282],
        "priceTypes": [1],
        "currentRange": [500, 100000],
        "salesRankRange": [1, 500000],
        "isRangeEnabled": True,
        "sortType": 4,
        "dateRange": 1,
    }
    cfg = write(tmp_path, sel)
    (q,) = load_settings(cfg, env={}).queries
    sent: list[str] = []
    with server.SimServer(port=0, refill_rate=5000, seed=3, latency_scale=0.0) as sim:
        client = KeepaClient(sim.url, "queries-test-key", read_timeout_s=20)
        original = client.session.get

        def recording_get(url: str, params: dict[str, Any], **kw: Any) -> Any:
            sent.append(params.get("selection", ""))
            return original(url, params=params, **kw)

        client.session.get = recording_get  # type: ignore[method-assign]
        resp = client.deal(q.page_selection(1))
        client.close()
    assert json.loads(sent[0]) == {**sel, "page": 1}
    assert resp.envelope.tokens_consumed == 5
