"""Grade a folder of submitted notebooks: run each one, collect every exercise check, write a CSV.

    python -m scripts.grade_exercises submissions/ --out grades.csv
    python -m scripts.grade_exercises submissions/ --out grades.csv --exercises-only   # much faster

Each notebook runs top to bottom in a fresh kernel (working directory chapters/, the book's root
importable), with errors allowed, so a cell that fails does not hide the exercises after it. Every
`check("NN.k", ...)` the notebook calls reports to a log (utils.exercises, ONEHOT_EXERCISE_LOG);
the last report of each exercise counts. The CSV has one row per notebook: its name, the number of
exercises passed, the status of each exercise ("pass", "fail", "error", "not attempted", or
"not run" when the notebook calls the check but execution never reached it), and notes (cells that
raised, a timeout). `--exercises-only` runs just the set-up cell and the cells that call `check`
(the book's exercise cells are self-contained), skipping the chapter's training.

The checks run inside the student's kernel: they show what a student's code does, they are not a
proof against a student who edits the check itself. Run submissions you do not trust in a sandbox
(a container or a throw-away virtual machine): a notebook can run any code.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from scripts.setup_cell import ROOT
from utils.exercises import LOG_ENV

CHECK_CALL = re.compile(r"""\bcheck\(\s*["'](\d\d\.\d+)["']""")


def exercises_in(nb: nbformat.NotebookNode) -> list[str]:
    """The exercise ids the notebook checks, in order of first appearance."""
    found: list[str] = []
    for c in nb.cells:
        if c.cell_type == "code":
            found += [i for i in CHECK_CALL.findall(c.source) if i not in found]
    return found


def _only_exercises(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    nb.cells = [c for c in nb.cells if c.cell_type == "code" and (
        "setup-cell" in c.metadata.get("tags", []) or CHECK_CALL.search(c.source))]
    return nb


def grade(path: Path, exercises_only: bool = False, timeout: int = 600) -> dict:
    """Run one notebook; returns {"submission", "results": {id: status}, "notes": [...]}. """
    nb = nbformat.read(path, as_version=4)
    ids = exercises_in(nb)
    if exercises_only:
        nb = _only_exercises(nb)
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "checks.jsonl"
        saved = {k: os.environ.get(k) for k in (LOG_ENV, "PYTHONPATH")}
        os.environ[LOG_ENV] = str(log)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), saved["PYTHONPATH"]) if p)
        try:
            client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                                    resources={"metadata": {"path": str(ROOT / "chapters")}})
            client.execute()
        except CellTimeoutError:
            notes.append(f"a cell ran longer than {timeout} s; the rest was not run")
        except DeadKernelError:
            notes.append("the kernel died; the rest was not run")
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        reports = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    errors = sum(1 for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []) if o.output_type == "error")
    if errors:
        notes.append(f"{errors} cell(s) raised an error")
    results = {i: "not run" for i in ids}
    for r in reports:
        results[r["exercise"]] = r["status"]
    return {"submission": path.name, "results": results, "notes": notes}


def write_csv(graded: list[dict], out: Path) -> list[str]:
    """One row per submission; the columns are every exercise any submission checks. Returns the ids."""
    ids = sorted({i for g in graded for i in g["results"]})
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["submission", "passed", *ids, "notes"])
        for g in graded:
            res = g["results"]
            w.writerow([g["submission"], sum(s == "pass" for s in res.values()),
                        *(res.get(i, "absent") for i in ids), "; ".join(g["notes"])])
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder of submitted .ipynb files")
    parser.add_argument("--out", type=Path, default=Path("grades.csv"), help="CSV to write (default grades.csv)")
    parser.add_argument("--exercises-only", action="store_true",
                        help="run only the set-up cell and the cells that call check (fast)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell (default 600)")
    args = parser.parse_args(argv)
    paths = sorted(args.folder.glob("*.ipynb"))
    if not paths:
        print(f"no notebooks in {args.folder}", file=sys.stderr)
        return 1
    graded = []
    for path in paths:
        g = grade(path, args.exercises_only, args.timeout)
        print(f"{path.name}: " + ", ".join(f"{i} {s}" for i, s in g["results"].items())
              + (f" ({'; '.join(g['notes'])})" if g["notes"] else ""), flush=True)
        graded.append(g)
    write_csv(graded, args.out)
    print(f"wrote {args.out} ({len(graded)} submissions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
