"""pytest configuration for the whole repository.

- Makes the repository root importable (tests and notebooks import `utils`).
- Orders the run for two workers (`make test` runs pytest-xdist with `--dist loadfile`): the chapter
  notebooks first, longest last run first, then the unit-test files, so no long chapter starts last.
- Compares the outputs of cells tagged `nbval-tolerant` at a stated tolerance instead of digit for digit
  (scripts/nbval_tolerance.py): numbers a chapter prints from training differ between CPUs and thread counts.
- Enforces each chapter's CPU time budget when its notebook runs under nbval: the budget is the
  notebook's metadata `onehot.cpu_budget_minutes` (stated at the top of the chapter). With CI set
  (as in `.ci/run`), a notebook over its budget fails the run; elsewhere it is reported only.
- Prints a timing report at the end: each chapter against its budget, and the ten slowest unit tests.
"""
from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_seconds: dict[str, float] = defaultdict(float)   # notebook -> summed cell durations
_tests: dict[str, float] = defaultdict(float)     # unit test -> setup + call + teardown

from scripts import nbval_tolerance  # noqa: E402  (after the root is on sys.path)

nbval_tolerance.install()


# ---------------------------------------------------------------------------------------------------
# Order, timings and budgets
# ---------------------------------------------------------------------------------------------------
def _metadata(path: str) -> dict:
    return json.loads((ROOT / path).read_text(encoding="utf-8")).get("metadata", {}).get("onehot", {})


def pytest_collection_modifyitems(session, config, items):
    """Notebooks first, longest (last stored run) first; then everything else in collection order.
    Deterministic, so every xdist worker collects the same order."""
    def key(indexed):
        index, item = indexed
        path = item.nodeid.split("::")[0]
        if path.endswith(".ipynb"):
            return (0, -_metadata(path).get("last_run_seconds", 0.0), path, index)
        return (1, 0.0, "", index)
    items[:] = [item for _, item in sorted(enumerate(items), key=key)]


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _seconds[path] += report.duration
    else:
        _tests[report.nodeid] += report.duration


def _budget_minutes(path: str) -> float | None:
    return _metadata(path).get("cpu_budget_minutes")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _seconds:
        terminalreporter.section("chapter run times (nbval)")
        for path, seconds in sorted(_seconds.items()):
            budget = _budget_minutes(path)
            if budget is None:
                verdict = "NO BUDGET SET"
            else:
                verdict = f"{100 * seconds / (budget * 60):.0f}% of its budget of {budget:g} min"
            if path in _over_budget():
                verdict += "  <-- OVER BUDGET"
            terminalreporter.write_line(f"{path}: {seconds:.0f} s ({verdict})")
        terminalreporter.write_line(f"all chapters: {sum(_seconds.values()):.0f} s of notebook time")
    if _tests:
        terminalreporter.section("the ten slowest unit tests (setup + call + teardown)")
        for nodeid, seconds in sorted(_tests.items(), key=lambda kv: -kv[1])[:10]:
            terminalreporter.write_line(f"{seconds:7.1f} s  {nodeid}")
        terminalreporter.write_line(f"all {len(_tests)} unit tests: {sum(_tests.values()):.0f} s")


def _over_budget() -> list[str]:
    return sorted(p for p, s in _seconds.items() if s > (_budget_minutes(p) or 0) * 60)


def pytest_sessionfinish(session, exitstatus):
    over = _over_budget()
    if over and os.environ.get("CI") and session.exitstatus == 0:
        print(f"\nchapters over their CPU budget: {', '.join(sorted(over))}", file=sys.stderr)
        session.exitstatus = 1
