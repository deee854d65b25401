"""``python -m bench --profile quick|full [--only NAME ...]``: run the benchmarks and
rewrite ``BENCHMARKS.md``.

Each benchmark module has ``NAME``, ``TITLE`` and ``run(profile, log_dir) -> markdown``; one
with ``PROFILES_BY_DEFAULT`` runs by default only in those profiles (the soak: full only).
``BENCHMARKS.md`` keeps one section per benchmark between ``<!-- bench:NAME -->`` markers:
a run with ``--only`` replaces only its own sections and the machine block. A benchmark that
fails leaves a section saying so (with its error) and the others still run; the exit status
is then 1.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import ModuleType

from bench import (
    capacity,
    claims,
    gateway_mix,
    harness,
    heartbeats,
    keepa_step,
    proportions,
    results_per_token,
    scaling,
    soak_report,
    use_it,
    utilization,
    web_deals,
)

# In the order of BENCHMARKS.md. The first, utilization, is the old short profile (a 1-s
# step with unscaled latency): a smoke test of the fleet against the peer, not a figure of
# what a user gets; 7 (proportions) is that.
BENCHMARKS: list[ModuleType] = [
    utilization,
    capacity,
    scaling,
    heartbeats,
    soak_report,
    web_deals,
    results_per_token,
    proportions,
    keepa_step,
    use_it,
    gateway_mix,
    claims,
]
OUTPUT = harness.ROOT / "BENCHMARKS.md"

HEADER = """# Benchmarks

Written by `make bench` (`python -m bench --profile quick`) and `make bench-full`
(`--profile full`); do not edit by hand. Every figure is the median over the repeats of
that benchmark, with its spread (min–max) in parentheses. Each benchmark shows a baseline
measured in the same run beside it (the unmodified `keepa` package for token use, a bare
pyzmq echo loop for capacity, an idle broker for heartbeats). Goals are printed beside the
figures; a missed goal is marked **missed** and explained, never loosened.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--profile", choices=("quick", "full"), default="quick")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this benchmark (repeatable): " + ", ".join(m.NAME for m in BENCHMARKS),
    )
    parser.add_argument("--output", default=str(OUTPUT), help="default: BENCHMARKS.md")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    args = parser.parse_args(argv)
    names = {m.NAME for m in BENCHMARKS}
    for name in args.only:
        if name not in names:
            parser.error(f"unknown benchmark {name!r}; one of {', '.join(sorted(names))}")
    selected = [
        m
        for m in BENCHMARKS
        if (m.NAME in args.only)
        or (not args.only and args.profile in getattr(m, "PROFILES_BY_DEFAULT", (args.profile,)))
    ]
    log_root = Path(tempfile.mkdtemp(prefix="keepa-fleet-bench-"))
    info = harness.machine()
    harness.progress(f"profile {args.profile}: {', '.join(m.NAME for m in selected)}")
    sections: dict[str, str] = {}
    failed = False
    started = time.monotonic()
    for module in selected:
        t0 = time.monotonic()
        harness.progress(f"{module.NAME}: start")
        log_dir = log_root / module.NAME
        log_dir.mkdir()
        try:
            body = module.run(args.profile, log_dir)
        except Exception as exc:
            failed = True
            traceback.print_exc()
            body = (
                f"**This benchmark failed to run** ({type(exc).__name__}): "
                f"`{str(exc).splitlines()[0][:300] if str(exc) else ''}`"
            )
        took = time.monotonic() - t0
        harness.progress(f"{module.NAME}: done in {took:.0f} s")
        command = f"python -m bench --profile {args.profile} --only {module.NAME}"
        sections[module.NAME] = (
            f"## {module.TITLE}\n\nCommand: `{command}` (part of `make "
            f"{'bench' if args.profile == 'quick' else 'bench-full'}`); run at {_now()}, "
            f"took {took:.0f} s.\n\n{body}\n"
        )
    total = time.monotonic() - started
    machine_block = _machine_block(info, args.profile, total, [m.NAME for m in selected])
    _write(Path(args.output), machine_block, sections)
    harness.progress(f"wrote {args.output} ({total:.0f} s in all)")
    if args.keep_logs or failed:
        harness.progress(f"process logs kept in {log_root}")
    else:
        shutil.rmtree(log_root, ignore_errors=True)
    return 1 if failed else 0


def _machine_block(info: dict[str, str], profile: str, total_s: float, names: list[str]) -> str:
    rows = [[k, v] for k, v in info.items()]
    rows.append(["profile", profile])
    rows.append(["benchmarks in the latest run", ", ".join(names)])
    rows.append(["run at", _now()])
    rows.append(["run took", f"{total_s:.0f} s"])
    return "## Machine\n\n" + harness.table(["", ""], rows) + "\n"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _write(path: Path, machine_block: str, sections: dict[str, str]) -> None:
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    existing = dict(re.findall(r"<!-- bench:(\w+) -->\n(.*?)<!-- /bench:\1 -->", old, re.S))
    existing.update(sections)
    parts = [HEADER, _mark("machine", machine_block)]
    for module in BENCHMARKS:
        if module.NAME in existing:
            parts.append(_mark(module.NAME, existing[module.NAME]))
    path.write_text("\n".join(parts), encoding="utf-8")


def _mark(name: str, text: str) -> str:
    return f"<!-- bench:{name} -->\n{text.rstrip()}\n<!-- /bench:{name} -->\n"


if __name__ == "__main__":
    sys.exit(main())
