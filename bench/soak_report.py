"""The soak (``bench/soak.py``: fault scenarios at random on one fleet, then long fuzzing) as a
``BENCHMARKS.md`` section. Part of the full profile only (``make bench-full``): it takes
minutes, more than the quick profile's budget; ``--only soak`` runs it in either profile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import harness as h

NAME = "soak"
TITLE = "5. Soak: fault scenarios at random, then long fuzzing"
PROFILES_BY_DEFAULT = ("full",)  # not in the quick profile's 10 minutes


def run(profile: str, log_dir: Path) -> str:
    from bench import soak  # imports the fault suite from tests/: only when it runs

    h.progress(f"{NAME}: {soak.PROFILES[profile]}")
    return render(soak.run(profile))


def render(figures: dict[str, Any]) -> str:
    fleet = dict(figures.get("fleet", {}))
    kills = fleet.pop("kills_by_reason", {}) or {}
    rows = [[k, v] for k, v in fleet.items()]
    rows.append(["kills by reason", ", ".join(f"{k} {v}" for k, v in kills.items()) or "none"])
    parts = [h.table(["the fleet over the soak", "value"], rows)]
    scen_rows = []
    for name, summary in sorted(figures.get("scenarios", {}).items()):
        timings = [
            f"{key}: median {v['median']}, worst {v['max']}"
            for key, v in sorted(summary.items())
            if isinstance(v, dict)
        ]
        scen_rows.append([name, summary.get("runs", 0), "; ".join(timings) or "–"])
    parts.append(h.table(["scenario", "runs", "recovery times, s"], scen_rows))
    fuzz = figures.get("fuzz", {})
    if fuzz:
        parts.append(h.table(["fuzzing", "value"], [[k, v] for k, v in fuzz.items()]))
    n429 = fleet.get("status_429")
    low = fleet.get("min_tokens_left")
    parts.append(
        h.table(
            ["invariant (checked after every scenario)", "measured", "verdict"],
            [
                [
                    "0 429s caused by the fleet",
                    n429,
                    h.verdict(n429 == 0 if n429 is not None else None),
                ],
                [
                    "balance never below -max_deficit (0)",
                    low,
                    h.verdict(low >= 0 if isinstance(low, int | float) else None),
                ],
            ],
        )
    )
    return "\n\n".join(parts)
