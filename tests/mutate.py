"""``make mutate``: mutation testing of the modules where a wrong line costs money.

Runs mutmut (configured in pyproject's ``[tool.mutmut]``: the modules, the fast unit tests)
in a fresh copy of the tree under ``var/mutate`` (the checkout is never touched), then
prints the score of each module and every surviving mutant as the line it changed.

A survivor listed in ``tests/mutation_equivalents.txt`` (module, function, the mutated line,
and why it changes nothing anyone can observe) is reported apart and left out of the score.

    python tests/mutate.py [--jobs N] [--max-seconds S] [--diffs]

Exit status: 0 when every module reaches its goal (``GOALS``), 1 when one does not, 2 when
mutmut itself failed or ran out of time.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "var" / "mutate"
EQUIVALENTS = ROOT / "tests" / "mutation_equivalents.txt"
# Killed share each module must reach (the goals); the others: DEFAULT_GOAL.
GOALS = {"broker/ledger.py": 0.90, "broker/permits.py": 0.90, "sim/account.py": 0.90}
DEFAULT_GOAL = 0.80
# The property tests draw fewer examples per mutant: a mutant they catch fails in the first
# few; the full count runs in the suite.
ENV = {"BROKER_LOGIC_EXAMPLES": "30"}
# mutmut's exit codes of a mutant's test run (mutmut.stats.status_by_exit_code).
KILLED_CODES = {1, 3, 24, -24, 36, 152, 255}  # failed, internal error, timed out
SURVIVED_CODES = {0, 5, 33}  # passed, or no test covers the line


@dataclass(frozen=True)
class Mutant:
    key: str  # mutmut's name: broker.ledger.xǁLedgerǁgrant__mutmut_7
    module: str  # broker/ledger.py
    function: str  # Ledger.grant
    removed: str  # the original line(s), stripped
    added: str  # the mutated line(s), stripped


def copy_tree() -> None:
    """The tracked and new (not ignored) files, copied to WORK; mutmut's state from a
    previous run goes with the old copy."""
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / os.fsdecode(name)
        if src.is_file():
            dst = WORK / os.fsdecode(name)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def run_mutmut(jobs: int, max_seconds: float) -> int:
    mutmut = Path(sys.executable).parent / "mutmut"
    env = {**os.environ, **ENV}
    with open(WORK / "mutmut.log", "wb") as log:
        proc = subprocess.Popen(
            [str(mutmut), "run", "--max-children", str(jobs)],
            cwd=WORK,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            return proc.wait(timeout=max_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=30)
            return -1


def _functions(source: str) -> dict[str, str]:
    """Each (trampolined) function of a mutated module by its mangled name."""
    tree = ast.parse(source)
    lines = source.splitlines()
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and "__mutmut_" in node.name:
            out[node.name] = "\n".join(lines[node.lineno - 1 : node.end_lineno])
    return out


def _readable(mangled: str) -> str:
    # x_grant / xǁLedgerǁgrant (mutmut's mangling) -> grant / Ledger.grant
    name = mangled.split("__mutmut_")[0]
    if name.startswith("xǁ"):
        return ".".join(name[2:].split("ǁ"))
    return name[2:] if name.startswith("x_") else name


def load_mutants() -> tuple[dict[str, list[tuple[Mutant, int | None]]], list[str]]:
    """Every mutant of each module with its exit code; and the modules' names in order."""
    by_module: dict[str, list[tuple[Mutant, int | None]]] = {}
    for meta in sorted((WORK / "mutants").rglob("*.py.meta")):
        module = str(meta.relative_to(WORK / "mutants"))[: -len(".meta")]
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        funcs = _functions((WORK / "mutants" / module).read_text())
        rows = []
        for key, code in sorted(codes.items(), key=lambda kv: _order(kv[0])):
            mangled = key.rsplit(".", 1)[1]
            base = mangled.rsplit("__mutmut_", 1)[0]
            orig, mutated = funcs.get(base + "__mutmut_orig", ""), funcs.get(mangled, "")
            removed, added = _changed(orig, mutated, mangled)
            rows.append((Mutant(key, module, _readable(mangled), removed, added), code))
        by_module[module] = rows
    return by_module, list(by_module)


def _order(key: str) -> tuple[str, int]:
    name, _, n = key.rpartition("__mutmut_")
    return name, int(n) if n.isdigit() else 0


def _changed(orig: str, mutated: str, mangled: str) -> tuple[str, str]:
    a = orig.splitlines()[1:]  # the def line carries the mangled name
    b = mutated.splitlines()[1:]
    removed, added = [], []
    for line in difflib.ndiff(a, b):
        if line.startswith("- "):
            removed.append(line[2:].strip())
        elif line.startswith("+ "):
            added.append(line[2:].strip())
    return " / ".join(removed), " / ".join(added)


def load_equivalents() -> dict[tuple[str, str, str], str]:
    """``module | function | mutated line | reason`` per line; # comments."""
    out: dict[tuple[str, str, str], str] = {}
    if not EQUIVALENTS.exists():
        return out
    for n, raw in enumerate(EQUIVALENTS.read_text().splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        # The mutated line may hold " | " itself: module and function first, reason last.
        parts = [p.strip() for p in raw.split(" | ")]
        if len(parts) < 4 or not parts[-1]:
            raise SystemExit(f"{EQUIVALENTS}:{n}: want 'module | function | line | reason'")
        out[(parts[0], parts[1], " | ".join(parts[2:-1]))] = parts[-1]
    return out


def report(show_diffs: bool) -> bool:
    by_module, modules = load_mutants()
    equivalents = load_equivalents()
    used: set[tuple[str, str, str]] = set()
    all_ok = True
    print(f"{'module':<22} {'mutants':>7} {'killed':>6} {'surv.':>5} {'equiv.':>6} "
          f"{'unchk.':>6} {'score':>6} {'goal':>5}")  # fmt: skip
    survivors: list[Mutant] = []
    for module in modules:
        c: Counter[str] = Counter()
        for mutant, code in by_module[module]:
            eq = (mutant.module, mutant.function, mutant.added)
            if code is None:
                c["unchecked"] += 1
            elif code in KILLED_CODES:
                c["killed"] += 1
            elif eq in equivalents:
                c["equivalent"] += 1
                used.add(eq)
            else:
                c["survived"] += 1
                survivors.append(mutant)
        scored = c["killed"] + c["survived"] + c["unchecked"]
        score = c["killed"] / scored if scored else 1.0
        goal = GOALS.get(module, DEFAULT_GOAL)
        ok = score >= goal and not c["unchecked"]
        all_ok &= ok
        print(
            f"{module:<22} {len(by_module[module]):>7} {c['killed']:>6} {c['survived']:>5} "
            f"{c['equivalent']:>6} {c['unchecked']:>6} {score:>6.1%} {goal:>5.0%}"
            f"{'' if ok else '  BELOW GOAL'}"
        )
    print(f"\nsurviving mutants ({len(survivors)}):")
    for m in survivors:
        print(f"  {m.key}")
        print(f"      {m.module} | {m.function} | {m.added}")
        if show_diffs:
            print(f"      was: {m.removed}")
    stale = set(equivalents) - used
    if stale:
        print(f"\n{len(stale)} listed equivalents no longer survive (remove them):")
        for s in sorted(stale):
            print("  " + " | ".join(s))
    return all_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once")
    parser.add_argument(
        "--max-seconds", type=float, default=1140, help="stop mutmut after this (19 min)"
    )
    parser.add_argument("--diffs", action="store_true", help="show each survivor's old line")
    parser.add_argument(
        "--report-only", action="store_true", help="report on the last run in var/mutate"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    rc = 0
    if not args.report_only:
        copy_tree()
        rc = run_mutmut(args.jobs, args.max_seconds)
    ok = report(args.diffs)
    print(f"\nmutmut exit {rc}; {time.monotonic() - started:.0f} s; log: {WORK / 'mutmut.log'}")
    if rc != 0:
        print("mutmut did not finish: " + ("out of time" if rc == -1 else f"exit {rc}"))
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
