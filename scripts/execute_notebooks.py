"""Re-execute chapter notebooks in place, so the outputs in git are what the code produces now.

    python -m scripts.execute_notebooks                 # every chapter in _toc.yml
    python -m scripts.execute_notebooks chapters/01_word_vectors.ipynb

Each notebook runs top to bottom in a fresh kernel whose working directory is chapters/ (as in
Jupyter, nbval and Colab); widget state is stored so the website can draw the widgets. The file is
replaced only after a successful run, atomically: a failing notebook keeps its old outputs, and the
error names the cell. The wall time of each run is printed and stored in the notebook's metadata.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from scripts.setup_cell import ROOT, chapter_paths, write as write_setup_cell


def execute(path: Path, timeout: int = 1200) -> float:
    """Run the notebook at `path` and write it back in place; returns the wall time in seconds."""
    write_setup_cell(path)  # the set-up cell always comes from the template
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    nb.metadata.setdefault("onehot", {})["last_run_seconds"] = round(seconds, 1)
    fd, tmp = tempfile.mkstemp(suffix=".ipynb", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return seconds


def main(argv: list[str]) -> int:
    paths = [Path(a).resolve() for a in argv] or chapter_paths()
    failed = []
    for path in paths:
        if not path.is_file():
            print(f"no such notebook: {path}", file=sys.stderr)
            failed.append(path)
            continue
        print(f"executing {path.relative_to(ROOT)} ...", flush=True)
        try:
            seconds = execute(path)
        except CellExecutionError as err:
            print(f"FAILED {path.relative_to(ROOT)} (outputs left unchanged):\n{err}", file=sys.stderr)
            failed.append(path)
            continue
        print(f"  done in {seconds:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
