"""pytest configuration for the whole repository.

- Makes the repository root importable (tests and notebooks import `utils`).
- Enforces each chapter's CPU time budget when its notebook runs under nbval: the budget is the
  notebook's metadata `onehot.cpu_budget_minutes` (stated at the top of the chapter). With CI set
  (as in `.ci/run`), a notebook over its budget fails the run; elsewhere it is reported only.
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

_seconds: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _seconds[path] += report.duration


def _budget_minutes(path: str) -> float | None:
    meta = json.loads((ROOT / path).read_text(encoding="utf-8")).get("metadata", {})
    return meta.get("onehot", {}).get("cpu_budget_minutes")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _seconds:
        return
    terminalreporter.section("chapter run times (nbval)")
    for path, seconds in sorted(_seconds.items()):
        budget = _budget_minutes(path)
        verdict = "NO BUDGET SET" if budget is None else f"budget {budget:g} min"
        if path in _over_budget():
            verdict += "  <-- OVER BUDGET"
        terminalreporter.write_line(f"{path}: {seconds:.0f} s ({verdict})")


def _over_budget() -> list[str]:
    return sorted(p for p, s in _seconds.items() if s > (_budget_minutes(p) or 0) * 60)


def pytest_sessionfinish(session, exitstatus):
    over = _over_budget()
    if over and os.environ.get("CI") and session.exitstatus == 0:
        print(f"\nchapters over their CPU budget: {', '.join(sorted(over))}", file=sys.stderr)
        session.exitstatus = 1
