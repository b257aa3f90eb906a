"""Book-structure tests: the table of contents, the chapter template, and the committed outputs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from scripts.setup_cell import ROOT, SETUP_TAGS, chapter_paths, render, setup_cell_index

CHAPTERS = chapter_paths()
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def headings(nb) -> list[str]:
    return [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines()
            if re.match(r"#{1,2} ", line)]


def test_toc_and_chapters_folder_agree():
    assert CHAPTERS, "_toc.yml lists no chapters"
    missing = [p.name for p in CHAPTERS if not p.is_file()]
    assert not missing, f"in _toc.yml but not in chapters/: {missing}"
    extra = sorted({p.name for p in (ROOT / "chapters").glob("*.ipynb")} - {p.name for p in CHAPTERS})
    assert not extra, f"in chapters/ but not in _toc.yml: {extra}"
    for p in CHAPTERS:
        assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", p.name), f"{p.name}: chapters are named NN_topic.ipynb"


def test_toc_pages_exist():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [e["file"] for part in toc["parts"] for e in part["chapters"]]
    for f in files:
        assert any((ROOT / f"{f}{ext}").is_file() for ext in (".md", ".ipynb")), f"{f} is in _toc.yml but missing"


@pytest.fixture(params=CHAPTERS, ids=lambda p: p.stem)
def chapter(request):
    return request.param, read(request.param)


def test_setup_cell_is_the_template(chapter):
    path, nb = chapter
    i = setup_cell_index(nb)
    first_code = next(j for j, c in enumerate(nb.cells) if c.cell_type == "code")
    assert i == first_code, f"{path.name}: the set-up cell must be the first code cell"
    assert nb.cells[i].source == render(), f"{path.name}: set-up cell differs from the template; run python -m scripts.setup_cell"
    assert nb.cells[i].metadata.get("tags") == SETUP_TAGS


def test_chapter_follows_the_pattern(chapter):
    path, nb = chapter
    h = headings(nb)
    assert h and h[0].startswith("# "), f"{path.name}: the first cell must be the title (# ...)"
    assert nb.cells[0].cell_type == "markdown" and len(nb.cells[0].source.split("\n\n")) >= 2, \
        f"{path.name}: a motivation paragraph follows the title"
    order = ["## Learning goals", "## Results", "## Exercises", "## Summary", "## References"]
    found = [next((k for k, line in enumerate(h) if line.strip() == want), None) for want in order]
    assert None not in found, f"{path.name}: missing sections {[o for o, f in zip(order, found) if f is None]}"
    assert found == sorted(found), f"{path.name}: sections out of order, expected {order}"
    goals = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and "## Learning goals" in c.source)
    assert goals < setup_cell_index(nb), f"{path.name}: learning goals come before the set-up cell"


def test_results_cell_asserts_the_target(chapter):
    path, nb = chapter
    i = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and "## Results" in c.source)
    following = next(c for c in nb.cells[i + 1:] if c.cell_type == "code")
    assert re.search(r"^\s*assert ", following.source, re.M), f"{path.name}: the results cell must assert the target"


def test_exercises_have_hidden_solutions(chapter):
    path, nb = chapter
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    exercises = text[text.index("## Exercises"):text.index("## Summary")]
    assert re.search(r":class: dropdown|hide-cell|toggle", exercises), f"{path.name}: solutions must be hidden"


def test_runtime_is_stated_and_budgeted(chapter):
    path, nb = chapter
    budget = nb.metadata.get("onehot", {}).get("cpu_budget_minutes")
    assert budget, f"{path.name}: metadata onehot.cpu_budget_minutes is missing"
    assert re.search(rf"\*\*{budget:g} minutes?\*\*", nb.cells[0].source), \
        f"{path.name}: the top of the chapter must state the {budget:g}-minute CPU budget"
    last = nb.metadata.get("onehot", {}).get("last_run_seconds") or 0
    assert last <= 60 * budget, \
        f"{path.name}: its stored run took {last:.0f} s, over its budget of {budget:g} minutes"


def _stated_seconds(text: str) -> float | None:
    """'About 3 minutes', 'About 2½ minutes', 'About ½ minute', 'About 4 to 8 minutes' -> seconds (a range's
    midpoint)."""
    m = re.search(r"About (\d*)(½)?(?: to (\d+)(½)?)? minutes?", text)
    if not m or not (m[1] or m[2]):
        return None
    low = int(m[1] or 0) + (0.5 if m[2] else 0)
    high = int(m[3]) + (0.5 if m[4] else 0) if m[3] else low
    return 60 * (low + high) / 2


def test_stated_runtime_matches_the_last_run(chapter):
    """The runtime the reader is promised at the top is the one measured: 'About N minutes' within 50% of
    the last top-to-bottom run (scripts.execute_notebooks stores it as onehot.last_run_seconds), and a
    quoted 'the last run took N s' is that run."""
    path, nb = chapter
    last = nb.metadata.get("onehot", {}).get("last_run_seconds")
    assert last, f"{path.name}: metadata onehot.last_run_seconds is missing; run make execute"
    stated = _stated_seconds(nb.cells[0].source)
    assert stated, f"{path.name}: the top of the chapter must say 'About N minutes on a 2-core CPU'"
    assert abs(stated / last - 1) <= 0.5, \
        f"{path.name}: the top says about {stated / 60:g} minutes, the last run took {last:.0f} s"
    quoted = re.search(r"the last run took (\d+) s", nb.cells[0].source)
    assert not quoted or abs(int(quoted[1]) - last) <= 1, \
        f"{path.name}: the top quotes a last run of {quoted[1]} s, the stored one took {last:.0f} s"


def test_outputs_are_fresh_and_clean(chapter):
    path, nb = chapter
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), \
        f"{path.name}: not executed top to bottom in one run (execution counts {counts}); run make execute"
    for k, c in enumerate(code):
        for out in c.outputs:
            assert out.output_type != "error", f"{path.name}: code cell {k} has an error output"
            text = out.get("text", "") + json.dumps(out.get("data", {}).get("text/plain", ""))
            assert "/root/" not in text and "/work/" not in text, f"{path.name}: cell {k} leaks a local path"
            assert not (out.output_type == "stream" and out.name == "stderr" and "Warning" in out.text), \
                f"{path.name}: cell {k} shows a warning: {out.text[:200]}"
        assert "NBVAL_IGNORE_OUTPUT" not in c.source, f"{path.name}: use the nbval-ignore-output tag, not a comment"


def test_widgets_have_saved_state(chapter):
    path, nb = chapter
    views = [o.data[WIDGET_VIEW]["model_id"] for c in nb.cells if c.cell_type == "code"
             for o in c.outputs if o.output_type == "display_data" and WIDGET_VIEW in o.get("data", {})]
    if not views:
        return
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    missing = [m for m in views if m not in state]
    assert not missing, f"{path.name}: widget views without saved state {missing}; re-execute with make execute"


def test_nbval_sanitizer_is_read():
    """The Makefile's --nbval-sanitize-with file must give nbval patterns that work: nbval reads only
    'regex: X' / 'replace: Y' pairs (a space after each colon), and a pair it cannot read is silently
    dropped, which once let a timestamped torch warning fail CI."""
    from nbval.plugin import get_sanitize_patterns

    patterns = get_sanitize_patterns((ROOT / "tests" / "nbval_sanitize.cfg").read_text())
    assert patterns, "tests/nbval_sanitize.cfg yields no pattern nbval can read ('replace: ' needs its space)"
    line = ("W1202 22:44:38.376000 26248 .venv/lib/python3.11/site-packages/torch/utils/_pytree.py:630] "
            "<enum 'KernelPreference'> is an Enum subclass and is now natively supported by torch.compile\n")
    text = "before\n" + line + line + "after\n"
    for regex, replace in patterns:
        text = re.sub(regex, replace, text)
    assert text == "before\nafter\n"


def _root_conftest():
    import importlib.util
    import sys
    module = sys.modules.get("conftest")
    if module is not None and Path(module.__file__).resolve() == ROOT / "conftest.py":
        return module
    spec = importlib.util.spec_from_file_location("onehot_root_conftest", ROOT / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_ci_budget_check_flags_over_the_budget_and_fails_over_the_slack(monkeypatch):
    """Over the budget: reported. Over CI_SLACK times it: the run fails under CI, and only under CI."""
    conftest = _root_conftest()
    budgets = {"a.ipynb": 2, "b.ipynb": 2, "c.ipynb": 2, "d.ipynb": None}
    monkeypatch.setattr(conftest, "_budget_minutes", budgets.get)
    monkeypatch.setattr(conftest, "_seconds", {"a.ipynb": 120.0, "b.ipynb": 121.0, "c.ipynb": 181.0, "d.ipynb": 1.0})
    assert conftest.CI_SLACK == 1.5
    assert conftest._over_budget() == ["b.ipynb", "c.ipynb", "d.ipynb"]  # a chapter with no budget is over it
    assert conftest._over_budget(conftest.CI_SLACK) == ["c.ipynb", "d.ipynb"]

    class Session:
        exitstatus = 0
    for ci, expected in ((None, 0), ("true", 1)):
        if ci:
            monkeypatch.setenv("CI", ci)
        else:
            monkeypatch.delenv("CI", raising=False)
        session = Session()
        conftest.pytest_sessionfinish(session, 0)
        assert session.exitstatus == expected
    monkeypatch.setattr(conftest, "_seconds", {"a.ipynb": 120.0, "b.ipynb": 179.0})
    session = Session()
    conftest.pytest_sessionfinish(session, 0)
    assert session.exitstatus == 0  # over the budget, under the slack: reported, not failed
