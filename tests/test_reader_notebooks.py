"""The reader notebooks (notebooks/en/, scripts/reader_notebooks.py): fresh, free of MyST, the same numbers
as the website, the same code and outputs as the chapters; and the website's buttons serve them."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nbformat
import pytest
from markdown_it import MarkdownIt

from scripts import reader_notebooks as R
from scripts.setup_cell import ROOT, chapter_paths

CHAPTERS = chapter_paths()
IDS = [p.stem for p in CHAPTERS]
SITE_DIR = Path(os.environ.get("SITE_DIR") or ROOT / "_build" / "html").resolve()


def reader(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(R.out_dir("en") / path.name, as_version=4)


# ----------------------------------------------------------------------------------------------------------------
# (a) the committed reader notebooks are what the chapters give now

@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_reader_notebook_is_fresh(path):
    target = R.out_dir("en") / path.name
    assert target.is_file(), f"{target.relative_to(ROOT)} is missing: run `make notebooks` and commit notebooks/"
    assert target.read_text() == R.render(path, "en"), (
        f"{target.relative_to(ROOT)} is stale: {path.relative_to(ROOT)} changed since it was written. "
        "Run `make notebooks` (python -m scripts.reader_notebooks) and commit notebooks/en/")


def test_no_reader_notebook_without_a_chapter():
    extra = sorted({p.name for p in R.out_dir("en").glob("*.ipynb")} - {p.name for p in CHAPTERS})
    assert not extra, f"notebooks/en/ holds notebooks of no chapter: {extra} (run `make notebooks`)"


def test_check_names_each_stale_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(R, "NOTEBOOKS", tmp_path)
    R.write_all("en")
    assert R.main(["--check"]) == 0
    victim = tmp_path / "en" / CHAPTERS[0].name
    victim.write_text(victim.read_text().replace("Words", "Worms", 1))
    (tmp_path / "en" / CHAPTERS[1].name).unlink()
    assert R.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert CHAPTERS[0].name in err and CHAPTERS[1].name in err and CHAPTERS[2].name not in err, err


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_only_markdown_changes(path):
    """Code cells, outputs, ids, tags and metadata as in the chapter; markdown cells keep id and metadata."""
    source, ours = nbformat.read(path, as_version=4), reader(path)
    extra = ours.cells[len(source.cells):]
    assert all(c.cell_type == "markdown" and c.id == "reader-references" for c in extra), "unexpected cells added"
    for a, b in zip(source.cells, ours.cells):
        assert (a.cell_type, a.get("id"), a.metadata) == (b.cell_type, b.get("id"), b.metadata), a.get("id")
        if a.cell_type == "code":
            assert a == b, f"{path.name}: code cell {a.id} differs from the chapter's"
    meta = {k: v for k, v in ours.metadata.items()}
    meta["onehot"] = {k: v for k, v in meta["onehot"].items() if k != R.META_KEY}
    assert meta == source.metadata


# ----------------------------------------------------------------------------------------------------------------
# (b) no MyST left, as a CommonMark renderer shows a cell (an independent detector, itself tested below)

MD = MarkdownIt("commonmark")
MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$", re.S)
MYST = [
    ("role", re.compile(r"\{[A-Za-z][\w:.+-]*\}<code>")),  # {name}`content` renders as {name}<code>content</code>
    ("directive", re.compile(r"class=\"language-\{")),  # ```{name} renders as a code block of language {name}
    ("directive", re.compile(r"(?:^|>|\n)\s*:{3,}\s*\{")),  # :::{name} stays text
    ("directive option", re.compile(r"(?:^|>|\n)\s*:[\w-]+:(?:\s|<|$)")),  # :class: dropdown
    ("glue", re.compile(r"glue:|\{glue\}|papermill")),
    ("citation", re.compile(r"footcite|footbibliography|\{cite|\{bibliography")),
    ("label target", re.compile(r"(?:^|>|\n)\s*\([\w.:-]+\)=\s*(?:<|\n|$)")),
    ("substitution", re.compile(r"\{\{.*?\}\}")),
    ("comment", re.compile(r"(?:^|<p>|\n)%")),
]


def myst_in(markdown: str) -> list[str]:
    html = MD.render(MATH.sub("", markdown))
    found = [what for what, p in MYST[:2] if p.search(html)]
    text = re.sub(r"<pre><code[^>]*>.*?</code></pre>|<code>.*?</code>", "", html, flags=re.S)  # code is code
    return found + [what for what, p in MYST[2:] if p.search(text)]


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_no_myst_left(path):
    bad = [(c.id, myst_in(c.source)) for c in reader(path).cells if c.cell_type == "markdown" and myst_in(c.source)]
    assert not bad, f"notebooks/en/{path.name}: MyST left in cells {bad}"


@pytest.mark.parametrize("planted,what", [
    ("The corpus has {glue:text}`n_characters` characters.", "role"),
    ("It reads {glue:text}`ratio:.2f` and more.", "role"),
    ("As shown {footcite}`vaswani2017attention`.", "role"),
    ("```{admonition} Runtime\n:class: note\nAbout a minute.\n```", "directive"),
    ("1. **Ex.** Do it.\n\n   :::{admonition} Solution\n   :class: dropdown\n   Done.\n   :::", "directive"),
    ("```{footbibliography}\n```", "directive"),
    ("(sec-data)=\n## Data", "label target"),
    ("The {{ version }} of the book.", "substitution"),
    ("% a comment\nText.", "comment"),
    ("See {numref}`fig-map`.", "role"),
])
def test_detector_catches_planted_myst(planted, what):
    assert what in myst_in(planted), (planted, myst_in(planted))


def test_detector_passes_plain_markdown():
    clean = ("Text with `code {x}` and $\\frac{{a}}{b}$ and a table | a |.\n\n```python\nd = {'a': 1}\n"
             "print(f\"{d}\")\n```\n\n<details>\n<summary>Solution</summary>\n\n```python\nx = 1\n```\n\n</details>\n\n"
             "> **Runtime**\n>\n> About 45% of a minute (Vaswani et al., 2017).")
    assert myst_in(clean) == []


def test_generator_refuses_unknown_myst():
    ctx = R.Context({}, R.LABELS["en"], R.raw_base())
    for bad in ("See {numref}`fig-map`.", "```{figure} a.png\n```", "The {{ version }}."):
        with pytest.raises(R.MystError):
            R.rewrite_markdown(bad, ctx)


# ----------------------------------------------------------------------------------------------------------------
# (c) glued numbers: myst-nb's own formatting of the executed outputs, and the numbers on the built website

GLUE = re.compile(r"\{glue(?::text)?\}`([^`]+)`")


def _glued(path: Path) -> list[tuple[str, str]]:
    """(cell id, the text myst-nb shows) for each {glue:text} of the chapter, in document order."""
    from myst_nb.core.variables import format_plain_text  # myst-nb's function, not ours
    nb = nbformat.read(path, as_version=4)
    data = R.glue_data(nb)
    out = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for content in GLUE.findall(cell.source):
                key, fmt = content.rsplit(":", 1) if ":" in content else (content, "s")
                out.append((cell.id, format_plain_text(data[key]["text/plain"], fmt)))
    return out


@pytest.mark.parametrize("path", [p for p in CHAPTERS if _glued(p)], ids=lambda p: p.stem)
def test_glue_values_as_myst_nb_formats_them(path):
    cells = {c.id: c.source for c in reader(path).cells}
    start = {}
    for cell_id, value in _glued(path):  # each value where its role stood, in the roles' order
        at = cells[cell_id].find(R.escape_markdown(value), start.get(cell_id, 0))
        assert at >= 0, f"{path.name}, cell {cell_id}: {value!r} missing (or out of order)"
        start[cell_id] = at + len(R.escape_markdown(value))


@pytest.mark.parametrize("path", [p for p in CHAPTERS if _glued(p)], ids=lambda p: p.stem)
def test_glue_values_equal_the_website(path):
    page = SITE_DIR / path.relative_to(ROOT).with_suffix(".html")
    if not page.is_file():
        pytest.skip(f"no built website at {SITE_DIR}")
    if page.stat().st_mtime < path.stat().st_mtime:
        pytest.skip(f"{page} is older than {path.name}: rebuild the site")
    import html
    shown = [html.unescape(re.sub(r"<[^>]+>", "", s))
             for s in re.findall(r'<span class="pasted-text">(.*?)</span>', page.read_text(), re.S)]
    assert shown == [v for _, v in _glued(path)], f"{page.name}: website {shown}"


def test_glue_formats_like_myst_nb():
    from myst_nb.core.variables import format_plain_text
    for text, fmt in [("'7.7%'", "s"), ("86", "s"), ("0.123456", ".2f"), ("0.5", ".1%"), ("1234567", ",d"),
                      ("'1.651'", ""), ("3.0", ".3e"), ("2", "03d")]:
        assert R.format_plain_text(text, fmt) == format_plain_text(text, fmt), (text, fmt)
    data = {"x": {"text/plain": "0.123456"}, "s": {"text/plain": "'a_b*c'"}}
    assert R.glue_text(data, "x:.2f") == "0.12" and R.glue_text(data, "x") == "0.123456"
    assert R.escape_markdown(R.glue_text(data, "s")) == r"a\_b\*c"  # pasted text stays text


# ----------------------------------------------------------------------------------------------------------------
# citations, folds, notes

def test_citations_read_as_author_year():
    ctx = R.Context({}, R.LABELS["en"], R.raw_base())
    md = R.rewrite_markdown
    assert md("It learns from {footcite}`karpathy2015charrnn,karpathy2022nanogpt`, so", ctx) == \
        "It learns from (Karpathy, 2015a, 2022), so"
    assert md("Vaswani et al. {footcite}`vaswani2017attention` asked", ctx) == "Vaswani et al. (2017) asked"
    assert md("(Bahdanau et al. {footcite}`bahdanau2015neural`) feeds", ctx) == "(Bahdanau et al., 2015) feeds"
    assert md("the tweak of He et al. 2019 {footcite}`he2019bag`), and", ctx) == "the tweak of He et al. 2019), and"
    assert md("(LLaVA {footcite}`liu2023visual`).", ctx) == "(LLaVA, Liu et al., 2023a)."  # 2023b: rectified flow
    assert md("Word2Vec {footcite}`mikolov2013efficient,mikolov2013distributed` turns", ctx) == \
        "Word2Vec (Mikolov et al., 2013a, 2013b) turns"  # the book's own "Mikolov et al. 2013b"
    assert md("Use `{footcite}` in code.", ctx) == "Use `{footcite}` in code."  # code spans are left alone


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_references_list_every_cited_work(path):
    source = nbformat.read(path, as_version=4)
    keys = {k.strip() for c in source.cells if c.cell_type == "markdown"
            for ks in re.findall(r"\{footcite\}`([^`]+)`", c.source) for k in ks.split(",")}
    last = "\n".join(c.source for c in reader(path).cells if c.cell_type == "markdown").split("## References")[-1]
    works = R.bibliography()
    for key in keys:
        w = works[key]
        assert f"- **{w.authors(R.LABELS['en'])}, {w.when}.** " in last, f"{path.name}: {key} not in References"
    assert last.count("\n- **") == len(keys)


def test_solution_fold_and_note():
    ctx = R.Context({}, R.LABELS["en"], R.raw_base())
    out = R.rewrite_markdown("1. **Ex.** Do it.\n\n   :::{admonition} Solution\n   :class: dropdown\n   ```python\n"
                             "   x = 1\n   ```\n   Because.\n   :::\n\n```{admonition} Runtime\n:class: note\n"
                             "About a minute.\n\nOn a GPU less.\n```", ctx)
    assert out == ("1. **Ex.** Do it.\n\n   <details>\n   <summary>Solution</summary>\n\n   ```python\n   x = 1\n"
                   "   ```\n   Because.\n\n   </details>\n\n> **Runtime**\n>\n> About a minute.\n>\n> On a GPU less.")
    html = MD.render(out)  # the fold holds rendered markdown: a code block and a paragraph
    assert re.search(r"<details>\s*<summary>Solution</summary>\s*<pre><code class=\"language-python\">x = 1", html)
    assert "<p>Because.</p>" in html and "<blockquote>\n<p><strong>Runtime</strong></p>" in html


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_every_solution_is_folded(path):
    source = nbformat.read(path, as_version=4)
    md = [c.source for c in source.cells if c.cell_type == "markdown"]
    n = sum(s.count(":::{admonition} Solution") for s in md)
    folds = sum(len(re.findall(r"^\s*:class:.*\bdropdown\b", s, re.M)) for s in md)  # solutions and optional folds
    ours = "\n".join(c.source for c in reader(path).cells if c.cell_type == "markdown")
    assert ours.count("<summary>Solution</summary>\n\n") == n and ours.count("</details>") == folds >= n


def test_relative_images_point_at_github():
    ctx = R.Context({}, R.LABELS["en"], R.raw_base())
    out = R.rewrite_markdown("![map](../book/figures/chapter_map.png) and ![x](https://a.b/c.png)", ctx)
    assert out == (f"![map]({R.raw_base()}../book/figures/chapter_map.png) and ![x](https://a.b/c.png)")
    assert R.raw_base().startswith("https://raw.githubusercontent.com/") and R.raw_base().endswith("/chapters/")


def test_translation_hook():
    path = CHAPTERS[0]
    nb = nbformat.read(path, as_version=4)
    seen = []

    def translate(text):
        seen.append(text)
        return text.replace("Words as vectors", "词向量")
    ours = R.reader_notebook(nb, translate, "en")
    assert ours.cells[0].source.startswith("# 词向量") and len(seen) == sum(c.cell_type == "markdown" for c in nb.cells)
    assert R.out_dir("zh_CN") == ROOT / "notebooks" / "zh_CN"


# ----------------------------------------------------------------------------------------------------------------
# (d) the website: Colab and Binder open the reader notebook, the download button serves it

def _fake_page(name: str) -> str:
    colab, _ = R.launch_urls(name, "chapters")
    binder = R.launch_urls(name, "chapters")[1]
    repo = R._config()["repository"]["url"]
    return (f'<a href="{binder}tree/chapters/{name}" class="btn">Binder</a>\n'
            f'<a href="{colab}" target="_blank" title="Launch on Colab">Colab</a>\n'
            f'<a href="../_sources/chapters/{name}" class="btn-download-source-button">.ipynb</a>\n'
            f'<a href="{repo}">repository</a> <a href="{repo}/blob/main/CHANGELOG.md">Changes</a>\n')


def test_site_links_and_downloads(tmp_path):
    site = tmp_path / "html"
    for path in CHAPTERS:
        page = site / path.relative_to(ROOT).with_suffix(".html")
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(_fake_page(path.name))
        src = site / "_sources" / path.relative_to(ROOT)
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(path.read_text())
    for _ in range(2):  # running it again changes nothing
        R.patch_site(site, "en")
        for path in CHAPTERS:
            page = (site / path.relative_to(ROOT).with_suffix(".html")).read_text()
            colab_new, binder = R.launch_urls(path.name, "notebooks/en")
            assert colab_new in page and R.launch_urls(path.name, "chapters")[0] not in page
            assert f'href="{binder}tree/notebooks/en/{path.name}"' in page
            assert f'href="../_sources/chapters/{path.name}"' in page
            assert page.endswith(_fake_page(path.name).split("\n")[-2] + "\n")  # other links untouched
            assert (site / "_sources" / path.relative_to(ROOT)).read_bytes() == \
                (R.out_dir("en") / path.name).read_bytes()


def test_site_without_colab_link_fails(tmp_path):
    site = tmp_path / "html"
    for path in CHAPTERS:
        page = site / path.relative_to(ROOT).with_suffix(".html")
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text("<p>no launch buttons</p>")
    with pytest.raises(SystemExit, match="no Colab link"):
        R.patch_site(site, "en")


def test_built_site_serves_reader_notebooks():
    """On the site `make site` built (skipped without one)."""
    if not (SITE_DIR / "chapters").is_dir():
        pytest.skip(f"no built website at {SITE_DIR}")
    for path in CHAPTERS:
        page = (SITE_DIR / path.relative_to(ROOT).with_suffix(".html")).read_text()
        colab_new, binder = R.launch_urls(path.name, "notebooks/en")
        assert colab_new in page, (f"{path.name}: the Colab button does not open notebooks/en/{path.name}; a site "
                                   "built by `make site` does (after a bare jupyter-book build, run "
                                   "`python -m scripts.reader_notebooks --site _build/html`)")
        assert f"{path.name}" in page and f"tree/chapters/{path.name}" not in page
        served = json.loads((SITE_DIR / "_sources" / path.relative_to(ROOT)).read_text())
        assert R.META_KEY in served["metadata"]["onehot"], f"_sources/{path.name} is not the reader notebook"


def test_setup_cell_finds_the_repository_from_notebooks_en():
    """The set-up cell walks up from the notebook's folder: run it in a kernel started in notebooks/en/."""
    from nbclient import NotebookClient
    nb = reader(CHAPTERS[0])
    setup = next(c for c in nb.cells if "setup-cell" in c.metadata.get("tags", []))
    probe = nbformat.v4.new_code_cell("import os; print(ROOT.resolve(), os.getcwd())")
    run = nbformat.v4.new_notebook(cells=[setup, probe], metadata=nb.metadata)
    NotebookClient(run, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(R.out_dir("en"))}}).execute()
    printed = "".join(o.get("text", "") for o in run.cells[1].outputs).split()
    assert printed == [str(ROOT.resolve()), str(R.out_dir("en").resolve())], printed


def test_references_follow_myst_footbibliography_rules():
    """Each {footbibliography} lists what was cited since the previous one; citations after the last one (or
    in a notebook without any) get a References cell at the end."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("A {footcite}`vaswani2017attention`.\n\n```{footbibliography}\n```", id="a"),
        nbformat.v4.new_markdown_cell("B {footcite}`ba2016layer`.", id="b")])
    ours = R.reader_notebook(nb)
    assert "**Vaswani et al., 2017.**" in ours.cells[0].source and "Ba et al." not in ours.cells[0].source
    assert ours.cells[-1].id == "reader-references" and ours.cells[-1].source.startswith("## References\n\n- **Ba")
    assert "Vaswani" not in ours.cells[-1].source
