"""The benchmark harness's pure parts: shares, refill counting, statistics, the report file.

No benchmark runs here and nothing is timed (figures belong in BENCHMARKS.md, not tests).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import __main__ as bench_main
from bench import harness
from bench.backlog import _refills_between, _released_delays_ms, shares
from bench.peer import KEEPA_ORIGIN, redirect_keepa_http


def test_shares_cover_every_asin_once() -> None:
    asins = [f"A{i:03d}" for i in range(10)]
    parts = shares(asins, 3)
    assert [len(p) for p in parts] == [4, 3, 3]
    assert [a for p in parts for a in p] == asins
    assert shares(asins[:2], 4) == [["A000"], ["A001"], [], []]


def test_refills_counted_from_the_phase() -> None:
    # Steps at 10.5, 11.5, 12.5, ...: (10.0, 12.5] holds 10.5, 11.5, 12.5.
    assert _refills_between(10.0, 12.5, 1.0, phase=0.5) == 3
    assert _refills_between(10.0, 12.4, 1.0, phase=100.5) == 2
    assert _refills_between(10.0, 10.0, 1.0, phase=0.5) == 0
    assert _refills_between(10.0, 13.0, 1.0, phase=None) == 3


def test_percentile_and_figure() -> None:
    values = [float(v) for v in range(1, 101)]
    assert harness.percentile(values, 50) == 50.0
    assert harness.percentile(values, 99) == 99.0
    assert harness.percentile([], 50) != harness.percentile([], 50)  # NaN
    fig = harness.Figure([3.0, 1.0, 2.0])
    assert (fig.median, fig.low, fig.high) == (2.0, 1.0, 3.0)
    assert fig.fmt(".1f", " s") == "2.0 s (1.0–3.0)"
    assert harness.Figure([5.0]).fmt(".0f") == "5"
    assert harness.Figure([float("nan")]).fmt() == "n/a"


def test_table_and_verdict() -> None:
    text = harness.table(["a", "b"], [[1, 2]])
    assert text.splitlines() == ["| a | b |", "| --- | --- |", "| 1 | 2 |"]
    assert harness.verdict(False) == "**missed**"
    assert harness.verdict(True) == "met"


def test_only_rewrites_its_own_sections(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    bench_main._write(out, "machine A\n", {"utilization": "U1\n", "capacity": "C1\n"})
    bench_main._write(out, "machine B\n", {"capacity": "C2\n"})
    text = out.read_text()
    assert "U1" in text and "C2" in text and "C1" not in text
    assert "machine B" in text and "machine A" not in text
    assert text.index("U1") < text.index("C2")


def test_peer_redirect_changes_only_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    seen: list[tuple[str, tuple[object, ...], dict[str, object]]] = []

    def fake_get(url: str, *args: object, **kwargs: object) -> str:
        seen.append((url, args, kwargs))
        return "answer"

    monkeypatch.setattr(requests, "get", fake_get)
    redirect_keepa_http("http://127.0.0.1:8080/")
    params = {"key": "k", "asin": "B000000001"}
    assert requests.get(f"{KEEPA_ORIGIN}/product/?", params, timeout=3) == "answer"
    assert requests.get("http://elsewhere/x") == "answer"
    assert seen == [
        ("http://127.0.0.1:8080/product/?", (params,), {"timeout": 3}),
        ("http://elsewhere/x", (), {}),
    ]


def test_reaction_to_refills_counts_only_waits_over_a_step() -> None:
    fleet = [{"intervals": [[10.0, 10.005], [10.3, 11.004], [11.2, 11.9]]}]
    delays, waited, no_step = _released_delays_ms(fleet, phase=0.0, period=1.0)
    assert [round(d) for d in delays] == [4]
    assert (waited, no_step) == (2, 1)
    # The peer: a 429 sleep, then its next request is the send.
    peer = [{"sends": [5.0, 20.01], "intervals": [[6.0, 20.0]]}]
    delays, waited, no_step = _released_delays_ms(peer, phase=0.0, period=1.0)
    assert [round(d) for d in delays] == [10]
    assert (waited, no_step) == (1, 0)


def test_the_soak_runs_only_in_the_full_profile_unless_asked() -> None:
    from bench import soak_report

    assert soak_report in bench_main.BENCHMARKS
    assert soak_report.PROFILES_BY_DEFAULT == ("full",)


def test_soak_figures_become_a_section() -> None:
    from bench.soak_report import render

    text = render(
        {
            "fleet": {"status_429": 0, "min_tokens_left": -3, "kills_by_reason": {"silent": 2}},
            "scenarios": {"sigstop": {"runs": 2, "recover_s": {"median": 1.5, "max": 2.0}}},
            "fuzz": {"inputs_per_target": 10},
        }
    )
    assert "| sigstop | 2 | recover_s: median 1.5, worst 2.0 |" in text
    assert "silent 2" in text
    assert "| 0 429s caused by the fleet | 0 | met |" in text
    assert "| balance never below -max_deficit (0) | -3 | **missed** |" in text


def test_numbered_sections_are_distinct_and_in_the_file_order() -> None:
    # Docs and code cite benchmarks by number ("benchmark 7"): two sections with one number,
    # or numbers out of BENCHMARKS.md's order, make those references ambiguous.
    heads = [m.TITLE.split(".", 1)[0] for m in bench_main.BENCHMARKS]
    numbers = [int(h) for h in heads if h.isdigit()]
    assert len(numbers) >= 9, heads  # the numbered sections are found at all
    assert numbers == sorted(set(numbers)), numbers
