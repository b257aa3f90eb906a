"""The student edition (scripts/student_edition.py, make student): no solution of a checkable exercise in the
students' notebooks, every solution in the key, and the grading script grades the students' copies."""
from __future__ import annotations

import re
import shutil

import nbformat
import pytest

from scripts import exercise_cells, student_edition
from scripts.reader_notebooks import reader_notebook
from scripts.setup_cell import chapter_paths

CHAPTERS = chapter_paths()
# the exercises of the chapters in the book (_toc.yml); a chapter still being written has its cells ready
CELLS = {c.id: c for c in exercise_cells.CELLS if any(p.name[:2] == c.id[:2] for p in CHAPTERS)}


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    out = tmp_path_factory.mktemp("student") / "student"
    return out, student_edition.build(out)


def _norm(text: str) -> str:
    return "\n".join(line.strip() for line in text.split("\n") if line.strip())


def _body(ex_id: str) -> str:
    """The solution's function body (the lines after `def ...:`), as the search target."""
    lines = CELLS[ex_id].solution.strip().split("\n")
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("def ")) + 1
    return _norm("\n".join(lines[start:]))


def _everything(nb: nbformat.NotebookNode) -> str:
    """Every cell's source and every text an output holds, each line stripped."""
    parts = []
    for cell in nb.cells:
        parts.append(cell.source)
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts += [v if isinstance(v, str) else "\n".join(v) for v in out.get("data", {}).values()
                      if isinstance(v, (str, list))]
    return _norm("\n".join(parts))


def test_layout(edition):
    out, result = edition
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "chapters", "key"]
    assert sorted(p.name for p in (out / "chapters").iterdir()) == [p.name for p in CHAPTERS]
    assert sorted(p.name for p in (out / "key").iterdir()) == [p.with_suffix(".md").name for p in CHAPTERS]
    readme = " ".join((out / "README.md").read_text().split())
    assert "chapters/" in readme and "key/" in readme and "24 checkable" in readme and "grade_exercises" in readme


def test_no_checkable_solution_in_the_students_notebooks(edition):
    out, _ = edition
    students = {p.name: _everything(nbformat.read(p, as_version=4)) for p in (out / "chapters").glob("*.ipynb")}
    reader = {p.name: _everything(reader_notebook(nbformat.read(p, as_version=4))) for p in CHAPTERS}
    for ex_id in CELLS:
        body = _body(ex_id)
        assert any(body in text for text in reader.values()), f"{ex_id}: the search does not find the solution"
        leaked = [name for name, text in students.items() if body in text]
        assert not leaked, f"{ex_id}'s solution is in the student notebook(s) {leaked}"


def test_key_has_every_solution(edition):
    out, result = edition
    for ex_id, cell in CELLS.items():
        chapter = next(p for p in CHAPTERS if p.name.startswith(ex_id[:2]))
        key = (out / "key" / chapter.with_suffix(".md").name).read_text()
        section = key.split(f"\n## {ex_id} ", 1)[1].split("\n## ", 1)[0]
        assert "(checkable, removed)" in section.split("\n", 1)[0], ex_id
        assert _body(ex_id) in _norm(section), f"{ex_id}: the key lacks its solution"
    # every folded solution of the book is in the key, numbered NN.k in order
    for path in CHAPTERS:
        n = nbformat.read(path, as_version=4)
        folds = sum(c.source.count("{admonition} Solution") for c in n.cells if c.cell_type == "markdown")
        ids = [e.id for e in result[path.name]]
        assert len(ids) == folds and ids == [f"{path.name[:2]}.{k}" for k in range(1, folds + 1)], (path.name, ids)


def test_students_keep_statement_stub_check_and_the_other_solutions(edition):
    out, result = edition
    for path in CHAPTERS:
        nb = nbformat.read(out / "chapters" / path.name, as_version=4)
        source = nbformat.read(path, as_version=4)
        assert [c.get("id") for c in nb.cells][:len(source.cells)] == [c.get("id") for c in source.cells]
        code = [c.source for c in nb.cells if c.cell_type == "code"]
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        for ex in result[path.name]:
            assert f"{ex.id[3:]}. **{ex.title}**" in text, ex.id  # the statement stays
            if ex.checkable:
                assert CELLS[ex.id].code() in code, f"{ex.id}: stub and check cell"
        others = [e for e in result[path.name] if not e.checkable]
        assert text.count("<summary>Solution</summary>") == len(others)


def test_all_solutions_option(tmp_path):
    result = student_edition.build(tmp_path / "s", all_solutions=True)
    for path in CHAPTERS:
        nb = nbformat.read(tmp_path / "s" / "chapters" / path.name, as_version=4)
        assert not any("<summary>Solution</summary>" in c.source for c in nb.cells if c.cell_type == "markdown"), path.name
        key = (tmp_path / "s" / "key" / path.with_suffix(".md").name).read_text()
        assert all(f"## {e.id} " in key for e in result[path.name])
    n = sum(len(f) for f in result.values())
    readme = " ".join((tmp_path / "s" / "README.md").read_text().split())
    assert f"The solutions of all {n} exercises are taken out" in readme


def test_grading_the_students_copies(edition, tmp_path):
    """A student's copy with a correct function (from the key) passes; the stub left alone is 'not attempted'."""
    from scripts.grade_exercises import grade
    out, _ = edition
    chapter = CHAPTERS[0]
    key = (out / "key" / chapter.with_suffix(".md").name).read_text()
    first, second = [i for i in CELLS if i.startswith(chapter.name[:2])][:2]
    solution = re.search(r"```python\n(.*?)\n```", key.split(f"\n## {first} ", 1)[1], re.S).group(1)
    nb = nbformat.read(out / "chapters" / chapter.name, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and f'check("{first}"' in c.source)
    assert CELLS[first].stub.strip() in cell.source
    cell.source = cell.source.replace(CELLS[first].stub.strip(), solution.strip())
    submissions = tmp_path / "submissions"
    submissions.mkdir()
    nbformat.write(nb, submissions / "alice.ipynb")
    shutil.copy(out / "chapters" / chapter.name, submissions / "bob.ipynb")
    alice = grade(submissions / "alice.ipynb", exercises_only=True, timeout=300)
    bob = grade(submissions / "bob.ipynb", exercises_only=True, timeout=300)
    assert (alice["results"][first], alice["results"][second]) == ("pass", "not attempted"), alice
    assert (bob["results"][first], bob["results"][second]) == ("not attempted", "not attempted"), bob
