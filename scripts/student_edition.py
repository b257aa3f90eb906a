"""The student edition of the chapters, and the instructor's key.

    python -m scripts.student_edition                    # make student: writes _build/student/
    python -m scripts.student_edition --all-solutions    # also take out the other exercises' solutions
    python -m scripts.student_edition --out DIR          # somewhere else

_build/student/
    README.md   what is where, what was taken out, how to grade
    chapters/   NN_topic.ipynb: the reader notebooks (scripts/reader_notebooks.py, no MyST) without the
                solution of any checkable exercise: its statement, its stub and its `check` call stay
    key/        NN_topic.md: every exercise of the chapter, numbered "NN.k", statement and solution

A checkable exercise is one whose code cell calls `check("NN.k", ...)` (scripts/exercise_cells.py puts
them in the chapters; utils/exercises.py checks them; scripts/grade_exercises.py grades a folder of
them). The other exercises (on paper, or open-ended code) keep their folded solutions unless
--all-solutions is given. The notebooks are built fresh from chapters/, not from notebooks/en/.
"""
from __future__ import annotations

import argparse
import copy
import re
import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import nbformat

from scripts.grade_exercises import CHECK_CALL
from scripts.reader_notebooks import reader_notebook
from scripts.setup_cell import ROOT, chapter_paths

OUT = ROOT / "_build" / "student"
ITEM = re.compile(r"^(\d+)\. ", re.M)  # a numbered list item at the start of a line
FOLD = re.compile(r"^(?P<indent>[ \t]*)<details>\n(?P=indent)<summary>(?P<summary>.*?)</summary>\n\n(?P<body>.*?)\n\n"
                  r"(?P=indent)</details>[ \t]*$", re.M | re.S)
TITLE = re.compile(r"\*\*(.+?)\*\*(?!\*)", re.S)


@dataclass
class Exercise:
    id: str  # "NN.k"
    title: str
    statement: str  # markdown, without the number, the title and the solution
    solution: str  # markdown, dedented
    checkable: bool


def _dedent(text: str, n: int = 3) -> str:
    return "\n".join(line[n:] if line.startswith(" " * n) else line.lstrip() for line in text.split("\n"))


def _items(source: str) -> list[tuple[int, int, int]]:
    """(number, start, end) of each top-level numbered item of a markdown cell: an item runs until the next
    line that starts at the margin with something else than a continuation."""
    starts = [(int(m.group(1)), m.start()) for m in ITEM.finditer(source)]
    out = []
    for i, (k, start) in enumerate(starts):
        end = starts[i + 1][1] if i + 1 < len(starts) else len(source)
        stop = re.search(r"\n(?=[^\s\d])", source[start:end])  # a heading or paragraph at the margin
        out.append((k, start, start + stop.start() if stop else end))
    return out


def exercises(nb: nbformat.NotebookNode, chapter: str, remove=lambda ex: ex.checkable
              ) -> tuple[nbformat.NotebookNode, list[Exercise]]:
    """Split a reader notebook into the student's copy (solutions for which `remove` is true taken out) and
    the exercises. An exercise is a numbered item that holds a <details> fold (its solution)."""
    nb = copy.deepcopy(nb)
    checkable = {i for c in nb.cells if c.cell_type == "code" for i in CHECK_CALL.findall(c.source)}
    found: list[Exercise] = []
    for cell in nb.cells:
        if cell.cell_type != "markdown" or "<details>" not in cell.source:
            continue
        source, pieces, pos = cell.source, [], 0
        for k, start, end in _items(source):
            item = source[start:end]
            fold = FOLD.search(item)
            if fold is None:
                continue
            ex_id = f"{chapter}.{k}"
            head = item[:fold.start()].rstrip()
            title = TITLE.search(head)
            statement = _dedent(head[title.end():] if title else head[len(f"{k}. "):]).strip()
            ex = Exercise(ex_id, title.group(1).strip() if title else "", statement,
                          _dedent(fold.group("body"), len(fold.group("indent"))), ex_id in checkable)
            found.append(ex)
            if remove(ex):
                pieces.append(source[pos:start] + item[:fold.start()].rstrip("\n ") + item[fold.end():])
                pos = end
        cell.source = "".join(pieces) + source[pos:]
    missing = checkable - {e.id for e in found}
    if missing:
        raise ValueError(f"chapter {chapter}: checkable exercises {sorted(missing)} have no folded solution")
    return nb, found


def key_markdown(title: str, path: Path, found: list[Exercise], removed: set[str]) -> str:
    lines = [f"# {title}: the exercises' solutions", "",
             f"The instructor's key to `chapters/{path.name}` of the student edition. "
             "Exercises marked *checkable* have a code cell that calls `check(\"NN.k\", ...)`; "
             "*removed* means the student's copy does not show this solution.", ""]
    for ex in found:
        tags = ", ".join(t for t, on in (("checkable", ex.checkable), ("removed", ex.id in removed)) if on)
        lines += [f"## {ex.id} {ex.title}" + (f" ({tags})" if tags else ""), "", ex.statement, "",
                  "**Solution.**", "", ex.solution.strip(), ""]
    return "\n".join(lines)


README = """# The student edition of "From One-Hot to CLIP"

Made by `make student` (`python -m scripts.student_edition{args}`) from the book's chapters.

- `chapters/`: the {n} chapter notebooks for students, as they read in Colab and JupyterLab (no website
  markup), with every output of the book's own run. {what}
- `key/`: one file per chapter for the instructor, `NN_topic.md`: every exercise, numbered "NN.k" (chapter,
  item), with its statement and its solution, and which of them are checkable and were removed. Do not hand
  these out.

**Running the notebooks.** Each notebook's first cell finds the book's repository by looking in the
notebook's folder and the folders above it, and makes its `utils/` importable: put `chapters/` anywhere inside
a clone of the repository (e.g. where `make student` wrote it). In Google Colab, upload a notebook and run
it: the first cell clones the repository and installs what Colab lacks (set its `REF` field to the tag of
your term's version of the book). Nothing else in this folder is needed.

**Checkable exercises.** Students write the function in place of `raise NotImplementedError` and run the
cell; `check("NN.k", ...)` tries it on hidden cases and says which case fails and how, never the answer.
It only shows what their code does: the book's own implementations are in the repository's `utils/` (the
chapters build them in the open), so a check is a learning aid, not an exam.

**Grading.** Collect the students' notebooks in a folder and, from the repository:

    python -m scripts.grade_exercises submissions/ --out grades.csv --exercises-only

One row per notebook, one column per exercise: pass, fail, error, not attempted (the stub was left as it
is), or not run. Run submissions you do not trust in a sandbox: a notebook can run any code.
"""


def build(out: Path = OUT, all_solutions: bool = False, lang: str = "en") -> dict[str, list[Exercise]]:
    """Write the student edition into `out` (emptied first); returns {chapter file: its exercises}."""
    if out.exists():
        shutil.rmtree(out)
    (out / "chapters").mkdir(parents=True)
    (out / "key").mkdir()
    remove = (lambda ex: True) if all_solutions else (lambda ex: ex.checkable)
    result = {}
    for path in chapter_paths():
        nb = nbformat.read(path, as_version=4)
        reader = reader_notebook(nb, lang=lang, source=path.relative_to(ROOT).as_posix())
        student, found = exercises(reader, path.name[:2], remove)
        student.metadata["onehot"]["reader_notebook"]["edition"] = "student"
        nbformat.write(student, out / "chapters" / path.name)
        title = re.match(r"#\s+(.*)", reader.cells[0].source)
        heading = f"{int(path.name[:2])}. {title.group(1).strip() if title else path.stem}"
        removed = {e.id for e in found if remove(e)}
        (out / "key" / path.with_suffix(".md").name).write_text(key_markdown(heading, path, found, removed))
        result[path.name] = found
    n_check = sum(e.checkable for f in result.values() for e in f)
    n_all = sum(len(f) for f in result.values())
    what = (f"The solutions of all {n_all} exercises are taken out; each statement stays, and each "
            f"checkable exercise ({n_check}) keeps its stub and its `check` cell." if all_solutions else
            f"The solutions of the {n_check} checkable exercises are taken out (their statement, their stub to "
            f"fill in and their `check` cell stay); the other {n_all - n_check} exercises (on paper, or "
            "open-ended code) keep their folded solution, as on the website.")
    readme = README.format(args=" --all-solutions" if all_solutions else "", n=len(result), what=what)
    def wrap(item: str) -> str:  # the list items the numbers went into, rewrapped
        return textwrap.fill(" ".join(item.split()), 108, initial_indent="- ", subsequent_indent="  ",
                             break_on_hyphens=False, break_long_words=False)
    (out / "README.md").write_text("\n\n".join(
        "\n".join(wrap(item) for item in p[2:].split("\n- ")) if p.startswith("- ") else p
        for p in readme.split("\n\n")))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder to write (default {OUT.relative_to(ROOT)})")
    parser.add_argument("--all-solutions", action="store_true",
                        help="take out every exercise's solution, not only the checkable ones'")
    args = parser.parse_args(argv)
    result = build(args.out, args.all_solutions)
    n = sum(len(f) for f in result.values())
    print(f"wrote {args.out}: {len(result)} student notebooks in chapters/, the key to {n} exercises in key/, "
          "README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
