"""Each deal query is visible in the status summary, one line per query."""

from __future__ import annotations

from broker.status_cli import format_status


def test_each_query_has_its_line() -> None:
    state = {
        "tokens": {"now": 10},
        "pipeline": {
            "candidates_waiting": 3,
            "queries": {
                "used-books": {
                    "domain": 1,
                    "deals_live": 4,
                    "deals_found": 7,
                    "candidates_waiting": 2,
                    "pages": 5,
                    "tokens": 25,
                    "last_scan_age_s": 12.0,
                    "feed_stale": True,
                },
                "de-toys": {"domain": 3, "deals_found": 1, "last_scan_age_s": None},
            },
        },
        "workers": [],
    }
    lines = [x for x in format_status(state).splitlines() if x.startswith("query")]
    assert len(lines) == 2
    de, used = lines  # sorted by name
    assert "de-toys (domain 3)" in de and "found 1" in de and "not scanned" in de
    assert "used-books (domain 1)" in used
    for part in ("deals live 4", "found 7", "waiting 2", "pages 5", "tokens 25", "FEED STALE"):
        assert part in used, part
