"""Mutation testing of `utils/`: does the test suite notice a planted bug?

    make mutate                 # every module (hours on a 2-core machine: run it over several sittings)
    make mutate MODULE=vlm      # one module: utils/vlm.py
    python -m scripts.mutate vlm compress   # the same, several modules
    python -m scripts.mutate --survivors vq # after adding tests: test again only the module's survivors

The tool is mutmut 3.8.1 (pinned in the Makefile), configured in setup.cfg: it copies the repository into
`mutants/` (git-ignored), rewrites each function of `utils/` into many variants that differ by one small
change (`+` for `-`, `<` for `<=`, a constant off by one, an argument dropped, ...), and for each variant runs
the unit tests that call that function, found once in a first run with every test. A variant the tests fail
on is "killed"; one they pass is a bug they would not notice ("survived").

mutmut was chosen over cosmic-ray for that test selection: cosmic-ray runs the whole test command for every
mutant, which for this repository's ~15,000 mutants is weeks of CPU, not hours.

After each run this script records which commit each module was mutated at (`mutants/onehot-runs.json`),
then `scripts.mutation_report` writes tests/MUTATION.md from mutmut's results. Not part of `make test` or CI.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from scripts import mutation_report
from scripts.setup_cell import ROOT

RUNS = ROOT / "mutants" / "onehot-runs.json"


def modules() -> list[str]:
    """The modules mutated: utils/*.py (utils/viz, the plotting code, is left out in setup.cfg)."""
    return sorted(p.stem for p in (ROOT / "utils").glob("*.py"))


def commit() -> str:
    """HEAD's short hash, with "+changes" if utils/ or tests/ (the report aside) differ from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "utils", "tests", ":!tests/MUTATION.md"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    return head + ("+changes" if dirty else "")


SURVIVED = {code for code, s in mutation_report.STATUS.items() if s in ("survived", "no tests")}  # mutmut exit codes


def forget_survivors(name: str) -> list[str]:
    """Mark the survivors of utils/<name>.py in mutants/ as not yet checked, so that the next run tests them
    again with the tests as they are now (a killed mutant stays killed: adding tests cannot revive it).
    Returns the mutants left to check: those reset, and any not checked yet (an interrupted run's)."""
    meta_path = ROOT / "mutants" / "utils" / f"{name}.py.meta"
    if not meta_path.exists():
        raise SystemExit(f"scripts.mutate: utils/{name}.py has no results in mutants/ to test again: run it first")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    codes = meta["exit_code_by_key"]
    again = [key for key, code in codes.items() if code in SURVIVED]
    for key in again:
        codes[key] = None
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    return sorted(key for key, code in codes.items() if code is None)


def run(names: list[str], survivors: bool = False) -> int:
    known = modules()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"scripts.mutate: no module utils/{unknown[0]}.py; the modules are: {', '.join(known)}")
    if survivors and not names:
        raise SystemExit("scripts.mutate: --survivors needs the modules to test again, e.g. --survivors vq")
    todo = names or known
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    runs = json.loads(RUNS.read_text()) if RUNS.exists() else {}
    status = 0
    for name in todo:
        # mutmut runs every mutant a pattern matches, killed or not: a survivors run names its mutants one by one
        targets = [f"utils.{name}.*"]
        if survivors:
            targets = forget_survivors(name)
            print(f"utils/{name}.py: {len(targets)} survivors to test again", flush=True)
            if not targets:
                continue
        start, at = time.time(), commit()
        print(f"mutating utils/{name}.py at {at} ...", flush=True)
        code = subprocess.run([sys.executable, "-m", "mutmut", "run", *targets], cwd=ROOT, env=env).returncode
        if code:
            print(f"scripts.mutate: mutmut stopped with exit code {code} on utils/{name}.py", file=sys.stderr)
            status = code
            continue
        seconds = round(time.time() - start)
        if survivors and name in runs:  # the module's first run still holds most verdicts: name both
            first = runs[name]
            runs[name] = dict(first, survivors_again=dict(commit=at, date=dt.date.today().isoformat(), seconds=seconds))
        else:
            runs[name] = dict(commit=at, date=dt.date.today().isoformat(), seconds=seconds)
        RUNS.parent.mkdir(exist_ok=True)
        RUNS.write_text(json.dumps(runs, indent=1, sort_keys=True))
    mutation_report.main([])
    return status


if __name__ == "__main__":
    args = sys.argv[1:]
    again = "--survivors" in args
    sys.exit(run([a for a in args if a != "--survivors"], survivors=again))
