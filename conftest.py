"""pytest configuration for the whole repository.

- Makes the repository root importable (tests and notebooks import `utils`).
- Orders the run for two workers (`make test` runs pytest-xdist with `--dist loadfile`): the chapter
  notebooks first, longest last run first, then the unit-test files, so no long chapter starts last.
- Compares the outputs of cells tagged `nbval-tolerant` at a stated tolerance instead of digit for digit
  (scripts/nbval_tolerance.py): numbers a chapter prints from training differ between CPUs and thread counts.
- Checks each chapter's CPU time budget when its notebook runs under nbval: the budget is the
  notebook's metadata `onehot.cpu_budget_minutes` (stated at the top of the chapter). A notebook over
  its budget is reported; with CI set (as in `.ci/run`), one over CI_SLACK times its budget fails the run.
  The slack is for the machine, not the chapter: CI gives each chapter one core beside another chapter,
  and one core of CI's machines is up to ~1.45x slower than another's (the same commit, chapter 12: 403 s
  on one machine, 594 s on an AMD EPYC, which ran it in 407 s with two cores to itself). The budget
  itself is also held statically: tests/test_book.py fails a chapter whose stored last run
  (scripts.execute_notebooks, the chapter alone) took longer than its budget.
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


CI_SLACK = 1.5  # CI fails a chapter over 1.5x its budget; see the module docstring for why


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _seconds:
        terminalreporter.section("chapter run times (nbval)")
        terminalreporter.write_line(f"CPU: {_cpu_name()}, {os.cpu_count()} cores; a chapter over its budget is "
                                    f"reported, one over {CI_SLACK:g}x its budget fails the run under CI")
        for path, seconds in sorted(_seconds.items()):
            budget = _budget_minutes(path)
            if budget is None:
                verdict = "NO BUDGET SET"
            else:
                verdict = f"{100 * seconds / (budget * 60):.0f}% of its budget of {budget:g} min"
            if path in _over_budget(CI_SLACK):
                verdict += f"  <-- OVER {CI_SLACK:g}x THE BUDGET"
            elif path in _over_budget():
                verdict += "  <-- over budget on this machine"
            terminalreporter.write_line(f"{path}: {seconds:.0f} s ({verdict})")
        terminalreporter.write_line(f"all chapters: {sum(_seconds.values()):.0f} s of notebook time")
    if _tests:
        terminalreporter.section("the ten slowest unit tests (setup + call + teardown)")
        for nodeid, seconds in sorted(_tests.items(), key=lambda kv: -kv[1])[:10]:
            terminalreporter.write_line(f"{seconds:7.1f} s  {nodeid}")
        terminalreporter.write_line(f"all {len(_tests)} unit tests: {sum(_tests.values()):.0f} s")


def _over_budget(factor: float = 1.0) -> list[str]:
    """The chapters that ran longer than `factor` times their budget (all of them when one has none)."""
    return sorted(p for p, s in _seconds.items() if s > factor * (_budget_minutes(p) or 0) * 60)


def pytest_sessionfinish(session, exitstatus):
    over = _over_budget(CI_SLACK)
    if over and os.environ.get("CI") and session.exitstatus == 0:
        print(f"\nchapters over {CI_SLACK:g}x their CPU budget: {', '.join(over)}", file=sys.stderr)
        session.exitstatus = 1
