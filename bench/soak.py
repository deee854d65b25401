"""The soak: the fault suite's scenarios, at random, on one fleet, for minutes; then the fuzz
targets with many more inputs than ``make test`` gives them.

``run(profile)`` returns the figures (``python -m bench`` turns them into a section):

* per scenario (``tests/faults/scenarios.py``): how often it ran and, for every recovery
  time it measures (``*_s``), the median and the worst;
* the fleet over the whole soak: tokens consumed, deals and rejections, the simulator's 429
  count and lowest balance (must be 0 and >= 0), kills by reason;
* the fuzzing: inputs per target (``FLEET_FUZZ_EXAMPLES``), how long it took.

Every scenario checks every invariant after it (no 429, balance >= -max_deficit, a sound
database with every candidate accounted for, spend reconciled with the simulator, the
ledger's projection agreeing with it); the first broken one stops the soak with
``SoakFailure`` (after every process is stopped), naming the scenario, its seed and where
the logs are kept.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import ROOT, progress

TESTS = ROOT / "tests"
if str(TESTS) not in sys.path:  # the fleet harness and the scenarios live with the tests
    sys.path.insert(0, str(TESTS))

from faults import scenarios  # noqa: E402
from support import Processes  # noqa: E402

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"duration_s": 120.0, "fuzz_inputs": 30_000},
    "full": {"duration_s": 900.0, "fuzz_inputs": 300_000},
}
SEED = 20240611
FUZZ_TIMEOUT_S = 3600.0


class SoakFailure(AssertionError):
    """An invariant broke during the soak."""


def _scenario_steps() -> dict[str, Callable[[Any, random.Random], dict[str, Any]]]:
    def pick(fleet: Any, rng: random.Random) -> str:
        return str(rng.choice(sorted(fleet.workers)))

    return {
        "sigkill_permit_holder": lambda f, r: scenarios.sigkill_permit_holder(f),
        "sigkill_several": lambda f, r: scenarios.sigkill_several(f, seed=r.randrange(2**32)),
        "sigstop": lambda f, r: scenarios.sigstop(f, pick(f, r)),
        "stalled": lambda f, r: scenarios.stalled(f, pick(f, r)),
        "database_locked": lambda f, r: scenarios.database_locked(f),
        "broker_restart": lambda f, r: scenarios.broker_restart(f),
        "keepa_faults": lambda f, r: scenarios.keepa_faults(f),
        "external_and_plan": lambda f, r: scenarios.external_and_plan(f),
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(runs)}
    keys = sorted({k for r in runs for k, v in r.items() if k.endswith("_s") and _num(v)})
    for key in keys:
        values = [float(r[key]) for r in runs if _num(r.get(key))]
        out[key] = {"median": round(statistics.median(values), 2), "max": round(max(values), 2)}
    return out


def _num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def soak_fleet(duration_s: float, seed: int, log_dir: Path) -> dict[str, Any]:
    """The scenarios at random on one fleet for ``duration_s``."""
    procs = Processes(log_dir)
    fleet = scenarios.new_fleet(procs, log_dir)
    steps = _scenario_steps()
    rng = random.Random(seed)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in steps}
    t0 = time.monotonic()
    try:
        start = scenarios.start_fleet(fleet)
        progress(f"soak: fleet up in {start['start_s']:.1f} s; logs in {log_dir}")
        runs["unwritable_database"] = [scenarios.unwritable_database(fleet, log_dir)]
        end = t0 + duration_s
        done = 0
        while time.monotonic() < end:
            name = rng.choice(sorted(steps))
            now = time.monotonic()
            progress(
                f"soak: scenario {done + 1} ({name}), {now - t0:.0f} s of {duration_s:.0f} s, "
                f"{fleet.count('deals')} deals so far"
            )
            done += 1
            try:
                runs[name].append(steps[name](fleet, rng))
            except AssertionError as exc:
                raise SoakFailure(
                    f"{name} (soak seed {seed}, after {time.monotonic() - t0:.0f} s): {exc}\n"
                    f"logs in {log_dir}"
                ) from exc
        sim = fleet.sim_state()
        state = scenarios.state(fleet)
        totals = {
            "duration_s": round(time.monotonic() - t0, 1),
            "start_s": start["start_s"],
            "tokens_consumed": sim["tokens_consumed"],
            "status_429": sim["status_429"],
            "min_tokens_left": sim["min_tokens_left"],
            "deals": fleet.count("deals"),
            "rejections": fleet.count("rejections"),
            "kills_by_reason": state["kills_by_reason"],
        }
    finally:
        procs.stop_all()
    return {"fleet": totals, "scenarios": {k: _summary(v) for k, v in runs.items() if v}}


def soak_fuzz(inputs: int) -> dict[str, Any]:
    """The fuzz targets of ``tests/fuzz`` with ``inputs`` inputs each."""
    env = {**os.environ, "FLEET_FUZZ_EXAMPLES": str(inputs)}
    progress(f"soak: fuzzing, {inputs} inputs per target (pytest tests/fuzz; no output until done)")
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TESTS / "fuzz")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=FUZZ_TIMEOUT_S,
    )
    took = time.monotonic() - t0
    if out.returncode != 0:
        raise SoakFailure(f"fuzzing with {inputs} inputs per target failed:\n{out.stdout[-4000:]}")
    return {"inputs_per_target": inputs, "targets": 2, "took_s": round(took, 1)}


def run(profile: str) -> dict[str, Any]:
    """The soak of ``profile`` (quick or full): its figures, or SoakFailure."""
    config = PROFILES[profile]
    log_dir = Path(tempfile.mkdtemp(prefix="keepa-fleet-soak-"))
    figures = soak_fleet(config["duration_s"], SEED, log_dir)  # on failure the logs stay
    figures["fuzz"] = soak_fuzz(config["fuzz_inputs"])
    shutil.rmtree(log_dir, ignore_errors=True)
    figures["profile"] = profile
    return figures


if __name__ == "__main__":
    import json

    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "quick"), indent=2))
