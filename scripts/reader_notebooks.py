"""Reader notebooks: the chapters as they read in Colab and JupyterLab, without the website's MyST.

    python -m scripts.reader_notebooks                     # write notebooks/en/ from chapters/ (make notebooks)
    python -m scripts.reader_notebooks --check             # exit 1 naming each stale or extra reader notebook
    python -m scripts.reader_notebooks --site _build/html  # after the site build: the Colab, Binder and
                                                           # download buttons serve the reader notebooks

The chapters in chapters/ are written for the website: Jupyter Book renders their MyST. Colab and a
JupyterLab without extensions show MyST as raw text, so every chapter has a reader's copy in
notebooks/<language>/ with the same file name: the code cells, their outputs, every cell's id, tags and
metadata are unchanged; only markdown is rewritten. What the chapters use, and what it becomes:

  {glue:text}`key` / `key:fmt`    the value the chapter's code glued (myst-nb 1.4 keeps it in the cell's
                                   outputs under application/papermill.record/), formatted as myst-nb does
  {footcite}`k1,k2`               "(Vaswani et al., 2017; Ba et al., 2016)", or "Vaswani et al. (2017)" when
                                   the sentence already names the authors (book/references.bib, pybtex)
  {footbibliography}              the works the chapter cites, in full, sorted by author and year
  {admonition} + :class: dropdown  <details><summary>Title</summary> ... </details> (a solution stays folded)
  {admonition} + :class: note,    a blockquote opened by the bold title
  {note}, {tip}, {warning}, ...
  (label)= targets, % comments    removed
  ![alt](relative/path)           a raw.githubusercontent.com URL (repository and branch from _config.yml)

Any other MyST role or directive, or a substitution, stops the script naming the chapter and the cell, so
a new construct gets a rewrite here instead of reaching readers raw; every reader cell is checked for
leftover MyST afterwards (`leftover_myst`, also used by tests/test_reader_notebooks.py).

Languages: `reader_notebook(nb, translate=...)` takes a function from a markdown cell's MyST source to its
translation (applied before the rewrite), and `LABELS` holds the few words the rewrite itself writes.
English goes to notebooks/en/; a translation (say zh_CN) adds its LABELS entry and its translate function
and writes notebooks/zh_CN/ with `write_all("zh_CN", translate)`.
"""
from __future__ import annotations

import argparse
import copy
import html
import json
import re
import shutil
import sys
import unicodedata
from ast import literal_eval
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable
from urllib.parse import quote, urlsplit

import nbformat
import yaml

from scripts.setup_cell import ROOT, chapter_paths

NOTEBOOKS = ROOT / "notebooks"
BIB = ROOT / "book" / "references.bib"
GLUE_PREFIX = "application/papermill.record/"  # myst_nb.ext.glue.GLUE_PREFIX (glue(..., display=False))
META_KEY = "reader_notebook"  # under the notebook's metadata["onehot"]

# The words the rewrite writes itself; everything else comes from the (translated) chapter text.
LABELS: dict[str, dict[str, str]] = {
    "en": {"and": "and", "et_al": "et al.", "references": "References",
           "note": "Note", "tip": "Tip", "hint": "Hint", "important": "Important", "seealso": "See also",
           "attention": "Attention", "caution": "Caution", "warning": "Warning", "danger": "Danger",
           "error": "Error", "admonition": "Note"},
}
ADMONITIONS = {"note", "tip", "hint", "important", "seealso", "attention", "caution", "warning", "danger", "error"}

Translate = Callable[[str], str]


class MystError(ValueError):
    """A MyST construct the rewrite does not handle (yet)."""


def out_dir(lang: str = "en") -> Path:
    return NOTEBOOKS / lang


# ----------------------------------------------------------------------------------------------------------------
# glue: the values the code glued, formatted as myst-nb 1.4 formats {glue:text}

def glue_data(nb: nbformat.NotebookNode) -> dict[str, dict]:
    """{key: mime bundle} of every glue() call in the executed notebook (myst_nb.ext.glue.extract_glue_data)."""
    data: dict[str, dict] = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            meta = output.get("metadata", {}).get("scrapbook")
            if meta is None:
                continue
            prefix = len(meta.get("mime_prefix", ""))
            data[meta["name"]] = {k[prefix:]: v for k, v in output.get("data", {}).items()}
    return data


def format_plain_text(text: str, fmt_spec: str) -> str:
    """myst_nb.core.variables.format_plain_text (1.4.0), which {glue:text} applies to the text/plain value."""
    try:
        value = literal_eval(text)  # removes the quotes around a glued str
    except (SyntaxError, ValueError):
        value = text
    if fmt_spec == "":
        return str(value)
    type_char = fmt_spec[-1]
    if type_char == "s":
        value = str(value)
    elif type_char in ("b", "c", "d", "o", "x", "X"):
        value = int(value)
    elif type_char in ("e", "E", "f", "F", "g", "G", "n", "%"):
        value = float(value)
    return format(value, fmt_spec)


def glue_text(data: dict[str, dict], content: str) -> str:
    """The text {glue:text}`content` shows on the website ("key" or "key:fmt", as myst-nb splits it)."""
    parts = content.rsplit(":", 1)  # as myst-nb's PasteTextRole splits it
    key, fmt = (parts[0], parts[1]) if len(parts) == 2 else (parts[0], "s")
    if "::" in key:
        raise MystError(f"glue from another document ({content!r}) is not supported")
    if key not in data:
        raise MystError(f"no glue() output named {key!r} in the executed notebook")
    if "text/plain" not in data[key]:
        raise MystError(f"glue {key!r} has no text/plain")
    return format_plain_text(data[key]["text/plain"], fmt)


def escape_markdown(text: str) -> str:
    """Pasted text stays text in markdown (myst-nb inserts a text node): escape what markdown or math would read."""
    return re.sub(r"([\\`*_\[\]<>$|~#])", r"\\\1", text)


# ----------------------------------------------------------------------------------------------------------------
# citations: author-year text from book/references.bib

@dataclass
class Work:
    key: str
    surnames: list[str]
    year: str
    suffix: str = ""  # "a", "b" when two works share authors and year (in the order of references.bib)
    full: str = ""  # the entry in full, markdown (pybtex's plain style)

    def authors(self, labels: dict[str, str]) -> str:
        s = self.surnames
        if len(s) == 1:
            return s[0]
        if len(s) == 2:
            return f"{s[0]} {labels['and']} {s[1]}"
        return f"{s[0]} {labels['et_al']}"

    @property
    def when(self) -> str:
        return self.year + self.suffix


def _latex_text(s: str) -> str:
    from pybtex.richtext import Text
    return str(Text.from_latex(s)).strip()


@lru_cache(maxsize=None)
def bibliography(path: Path = BIB) -> dict[str, Work]:
    from pybtex.backends.markdown import Backend
    from pybtex.database import parse_file
    from pybtex.style.formatting.plain import Style

    db = parse_file(str(path))
    style, backend = Style(), Backend()
    works: dict[str, Work] = {}
    for key, entry in db.entries.items():
        persons = entry.persons.get("author") or entry.persons.get("editor") or []
        surnames = [_latex_text(" ".join(p.prelast_names + p.last_names)) for p in persons]
        if not surnames:
            raise MystError(f"{path.name}: {key} has no author or editor")
        full = style.format_entry(key, entry).text.render(backend)
        full = re.sub(r"\\([.\-()+!])", r"\1", full).replace("\n", " ")  # pybtex escapes more than markdown needs
        full = re.sub(r"&amp;(?!\w+;)", "&", full)
        works[key] = Work(key, surnames, _latex_text(entry.fields.get("year", "n.d.")), full=full)
    groups: dict[tuple, list[Work]] = {}
    for w in works.values():
        groups.setdefault((tuple(w.surnames) if len(w.surnames) <= 2 else (w.surnames[0], "+"), w.year), []).append(w)
    for same in groups.values():
        if len(same) > 1:
            for i, w in enumerate(same):
                w.suffix = "abcdefghijklmnopqrstuvwxyz"[i]
    return works


def _ends_with(before: str, phrase: str) -> bool:
    return before.endswith(phrase) and (len(before) == len(phrase) or not before[-len(phrase) - 1].isalnum())


def _named_before(before: str, work: Work, labels: dict[str, str]) -> str | None:
    """'named' if the text before the citation ends with the work's authors ("Vaswani et al.", "Levy and
    Goldberg", "Pascanu, Mikolov and Bengio"), 'dated' if it ends with them and the year, else None."""
    s = work.surnames
    phrases = [work.authors(labels)]
    if len(s) >= 3:
        listed = ", ".join(s[:-1])
        phrases += [f"{listed} {labels['and']} {s[-1]}", f"{listed}, {labels['and']} {s[-1]}"]
    for phrase in phrases:
        for year in (work.when, work.year):
            if _ends_with(before, f"{phrase} {year}"):
                return "dated"
        if _ends_with(before, phrase):
            return "named"
    return None


def _inside_parentheses(before: str, after: str) -> bool:
    """The citation closes a parenthesis opened earlier in its paragraph: "(LLaVA {footcite}`x`)"."""
    if not after.lstrip(" \t").startswith(")"):
        return False
    paragraph = re.split(r"\n[ \t>]*\n", before)[-1]
    depth = 0
    for ch in reversed(paragraph):
        depth += {")": 1, "(": -1}.get(ch, 0)
        if depth < 0:
            return True
    return False


def cite(keys: list[str], before: str, after: str, labels: dict[str, str]) -> tuple[str, bool]:
    """Author-year text for {footcite}`keys`, and whether to drop the spaces before it.

    before/after: the chapter text around the role, which decides the form: "(Vaswani et al., 2017)";
    "Vaswani et al. (2017)" after the authors' names; "(Bahdanau et al., 2015)" for
    "(Bahdanau et al. {footcite}`...`)"; nothing after "He et al. 2019"; "(LLaVA, Liu et al., 2023)" when
    the citation closes a parenthesis."""
    works = bibliography()
    missing = [k for k in keys if k not in works]
    if missing:
        raise MystError(f"cited but not in {BIB.name}: {', '.join(missing)}")
    cited = [works[k] for k in keys]
    flat = re.sub(r"\s+", " ", re.split(r"\n[ \t>]*\n", before)[-1]).rstrip()  # this paragraph only
    enclosed = _inside_parentheses(before, after)
    named = {_named_before(flat, w, labels) for w in cited}
    if named == {"dated"}:
        return "", True
    if named == {"named"} and len({w.authors(labels) for w in cited}) == 1:
        years = ", ".join(w.when for w in cited)
        return (f", {years}", True) if enclosed else (f" ({years})", True)
    parts: list[str] = []
    for w in cited:  # consecutive works of the same authors share them: "Karpathy, 2015, 2022"
        if parts and parts[-1].startswith(w.authors(labels) + ", "):
            parts[-1] += f", {w.when}"
        else:
            parts.append(f"{w.authors(labels)}, {w.when}")
    text = "; ".join(parts)
    return (f", {text}", True) if enclosed else (f"({text})", False)


def reference_list(keys: list[str], labels: dict[str, str]) -> list[str]:
    """Markdown list of the cited works in full, sorted by authors and year."""
    works = bibliography()
    def ascii_fold(s: str) -> str:  # Řehůřek sorts under R
        return unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode().lower()
    cited = sorted((works[k] for k in dict.fromkeys(keys)),
                   key=lambda w: ([ascii_fold(s) for s in w.surnames], w.year, w.suffix))
    return [f"- **{w.authors(labels)}, {w.when}.** {w.full}" for w in cited]


# ----------------------------------------------------------------------------------------------------------------
# the rewrite

@dataclass
class Context:
    glue: dict[str, dict]
    labels: dict[str, str]
    raw_base: str  # raw URL of chapters/ ("https://raw.githubusercontent.com/owner/repo/branch/chapters/")
    cited: list[str] = field(default_factory=list)  # cited since the last {footbibliography}, as MyST lists them


OPEN_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,}|:{3,})\{(?P<name>[^}\s]+)\}[ \t]*(?P<arg>.*)$")
OPEN_CODE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})")
OPTION = re.compile(r"^[ \t]*:(?P<key>[\w-]+):[ \t]*(?P<value>.*)$")
TARGET = re.compile(r"^[ \t]*\([\w.:-]+\)=[ \t]*$")
COMMENT = re.compile(r"^[ \t]*%")
ROLE_OR_CODE = re.compile(r"(?:\{(?P<role>[A-Za-z][\w:.+-]*)\})?(?P<ticks>`+)")
IMAGE = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)(?P<title>[^)]*)\)")
SUBSTITUTION = re.compile(r"\{\{[^{}]*\}\}")
MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$", re.S)


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= len(fence) and set(stripped) == {fence[0]}


def _dedent(lines: list[str], indent: str) -> list[str]:
    return [ln[len(indent):] if ln.startswith(indent) else ln.lstrip(" \t") for ln in lines]


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def _rewrite_inline(text: str, ctx: Context) -> str:
    """Roles, images and substitutions in a stretch of markdown that holds no fenced block."""
    out: list[str] = []
    pos = 0
    while True:
        m = ROLE_OR_CODE.search(text, pos)
        if m is None:
            out.append(_plain(text[pos:], ctx))
            break
        ticks = m.group("ticks")
        close = re.compile(rf"(?<!`){ticks}(?!`)").search(text, m.end())
        if close is None:  # an unmatched backtick run is literal text
            out.append(_plain(text[pos:m.end()], ctx))
            pos = m.end()
            continue
        out.append(_plain(text[pos:m.start()], ctx))
        if m.group("role") is None:  # a code span: copied as it is
            out.append(text[m.start():close.end()])
        else:
            content = text[m.end():close.start()]
            before = "".join(out)
            replacement, eat_space = _role(m.group("role"), content, text[:m.start()], text[close.end():], ctx)
            if eat_space:
                out = [before.rstrip(" \t\n") if re.search(r"\S[ \t]*\n?[ \t]*$", before) else before]
            out.append(replacement)
        pos = close.end()
    return "".join(out)


def _plain(text: str, ctx: Context) -> str:
    def image(m: re.Match) -> str:
        src = m.group("src")
        if re.match(r"^[a-z][a-z0-9+.-]*:", src) or src.startswith("#"):
            return m.group(0)
        return f"![{m.group('alt')}]({ctx.raw_base}{src}{m.group('title')})"
    found = SUBSTITUTION.search(MATH.sub("", text))
    if found:
        raise MystError(f"MyST substitution {found.group(0)!r} is not supported")
    return IMAGE.sub(image, text)


def _role(name: str, content: str, before: str, after: str, ctx: Context) -> tuple[str, bool]:
    if name in ("glue:text", "glue", "glue:any"):
        return escape_markdown(glue_text(ctx.glue, content)), False
    if name == "footcite":
        keys = [k.strip() for k in content.split(",") if k.strip()]
        ctx.cited += keys
        return cite(keys, before, after, ctx.labels)
    raise MystError(f"MyST role {{{name}}}`{content}` is not supported: add it to scripts/reader_notebooks.py")


def _rewrite_lines(lines: list[str], ctx: Context) -> list[str]:
    out: list[str] = []
    prose: list[str] = []

    def flush():
        if prose:
            out.extend(_rewrite_inline("\n".join(prose), ctx).split("\n"))
            prose.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        directive, code = OPEN_DIRECTIVE.match(line), OPEN_CODE.match(line)
        if directive:
            flush()
            indent, fence = directive.group("indent"), directive.group("fence")
            j, options = i + 1, {}
            while j < len(lines) and OPTION.match(lines[j]):
                opt = OPTION.match(lines[j])
                options[opt.group("key")] = opt.group("value").strip()
                j += 1
            k = j
            while k < len(lines) and not _closes(lines[k], fence):
                k += 1
            if k == len(lines):
                raise MystError(f"directive {{{directive.group('name')}}} is never closed")
            body = _rewrite_lines(_dedent(lines[j:k], indent), ctx)
            out.extend(indent + ln if ln else "" for ln in
                       _directive(directive.group("name"), directive.group("arg").strip(), options, body, ctx))
            i = k + 1
        elif code:
            flush()
            fence = code.group("fence")
            k = i + 1
            while k < len(lines) and not _closes(lines[k], fence):
                k += 1
            out.extend(lines[i:k + 1])
            i = k + 1
        elif TARGET.match(line) or COMMENT.match(line):
            i += 1
        else:
            prose.append(line)
            i += 1
    flush()
    return out


def _directive(name: str, arg: str, options: dict[str, str], body: list[str], ctx: Context) -> list[str]:
    classes = options.pop("class", "").split()
    options.pop("name", None)
    if options:
        raise MystError(f"directive {{{name}}}: options {sorted(options)} are not supported")
    body = _trim(body)
    if name == "footbibliography":
        works, ctx.cited = ctx.cited, []
        return reference_list(works, ctx.labels) if works else []
    if name in ("admonition", "dropdown") or name in ADMONITIONS:
        title = _rewrite_inline(arg, ctx) if arg else ""
        kind = name if name in ADMONITIONS else next((c for c in classes if c in ADMONITIONS), "admonition")
        if name == "dropdown" or "dropdown" in classes:
            summary = html.escape(title or ctx.labels[kind], quote=False)
            return ["<details>", f"<summary>{summary}</summary>", "", *body, "", "</details>"]
        label = title if name == "admonition" else ctx.labels[kind] + (f": {title}" if title else "")
        return [f"> **{label}**", ">", *(f"> {ln}" if ln.strip() else ">" for ln in body)]
    raise MystError(f"MyST directive {{{name}}} is not supported: add it to scripts/reader_notebooks.py")


def rewrite_markdown(text: str, ctx: Context) -> str:
    return "\n".join(_rewrite_lines(text.split("\n"), ctx))


# ----------------------------------------------------------------------------------------------------------------
# leftover MyST, in the HTML a CommonMark renderer makes of a cell

LEFTOVERS = [
    ("role", re.compile(r"\{[A-Za-z][\w:.+-]*\}<code>")),
    ("directive", re.compile(r"class=\"language-\{|(?:^|>|\n)[ \t]*(?::{3,}|`{3,}|~{3,})\{[^}\s]+\}")),
    ("directive option", re.compile(r"(?:^|>|\n)[ \t]*:(?:class|name|label|dropdown|open|width|align|alt|"
                                    r"figclass|figwidth|numbered|caption|tags|all|filter|style):(?:[ \t]|$)")),
    ("glue", re.compile(r"\{glue|glue:text|papermill\.record")),
    ("citation", re.compile(r"footcite|footbibliography|\{cite[:}]|\{bibliography\}")),
    ("label target", re.compile(r"(?:^|>|\n)[ \t]*\([\w.:-]+\)=[ \t]*(?:$|<|\n)")),
    ("substitution", SUBSTITUTION),
    ("comment", re.compile(r"(?:^|<p>|\n)%")),
]


def leftover_myst(markdown: str) -> list[str]:
    """MyST that survived in a markdown cell, as a CommonMark renderer (markdown-it-py) shows it."""
    from markdown_it import MarkdownIt
    rendered = MarkdownIt("commonmark").render(MATH.sub("", markdown))
    outside_code = re.sub(r"<pre><code(?![^>]*language-\{)[^>]*>.*?</code></pre>", "", rendered, flags=re.S)
    found = []
    for what, pattern in LEFTOVERS:
        text = rendered if what == "role" else outside_code
        if what != "role":
            text = re.sub(r"<code>.*?</code>", "", text, flags=re.S)
        m = pattern.search(text)
        if m:
            found.append(f"{what}: {text[max(0, m.start() - 30):m.end() + 30].strip()!r}")
    return found


# ----------------------------------------------------------------------------------------------------------------
# notebooks

def _config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def raw_base(folder: str = "chapters") -> str:
    repo = _config()["repository"]
    owner_repo = urlsplit(repo["url"]).path.strip("/").removesuffix(".git")
    book = (repo.get("path_to_book") or "").strip("/")
    return f"https://raw.githubusercontent.com/{owner_repo}/{repo.get('branch', 'main')}/" + \
        (f"{book}/" if book else "") + f"{folder}/"


def reader_notebook(nb: nbformat.NotebookNode, translate: Translate | None = None, lang: str = "en",
                    source: str = "") -> nbformat.NotebookNode:
    """The reader's copy of an executed chapter notebook: markdown cells without MyST (see the module's
    docstring), everything else as it is. `translate` maps a markdown cell's source to its translation;
    `source` (the chapter's path in the repository) is recorded in the metadata."""
    nb = copy.deepcopy(nb)
    ctx = Context(glue_data(nb), LABELS[lang], raw_base())
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        text = translate(cell.source) if translate else cell.source
        where = f"{source or 'notebook'}, cell {cell.get('id', '?')}"
        try:
            cell.source = rewrite_markdown(text, ctx)
        except MystError as exc:
            raise MystError(f"{where}: {exc}") from None
        left = leftover_myst(cell.source)
        if left:
            raise MystError(f"{where}: MyST left after the rewrite: {'; '.join(left)}")
        if cell.get("attachments"):
            raise MystError(f"{where}: cell attachments are not supported")
    if ctx.cited:  # cited after the last {footbibliography} (or there is none): the list goes at the end
        nb.cells.append(nbformat.v4.new_markdown_cell(
            f"## {ctx.labels['references']}\n\n" + "\n".join(reference_list(ctx.cited, ctx.labels)),
            id="reader-references"))
    nb.metadata.setdefault("onehot", {})[META_KEY] = {
        "generated_from": source, "language": lang,
        "by": "python -m scripts.reader_notebooks (make notebooks); edit the chapter, not this file"}
    return nb


def render(path: Path, lang: str = "en", translate: Translate | None = None) -> str:
    """The reader notebook of chapter `path`, as the text written to disk."""
    nb = nbformat.read(path, as_version=4)
    text = nbformat.writes(reader_notebook(nb, translate, lang, source=path.relative_to(ROOT).as_posix()))
    return text if text.endswith("\n") else text + "\n"


def _generated(path: Path) -> bool:
    try:
        return META_KEY in json.loads(path.read_text()).get("metadata", {}).get("onehot", {})
    except (OSError, ValueError):
        return False


def _shown(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def stale(lang: str = "en", translate: Translate | None = None) -> list[str]:
    """Reader notebooks that differ from a fresh rewrite of their chapter, are missing, or have no chapter."""
    folder, found = out_dir(lang), []
    for path in chapter_paths():
        target = folder / path.name
        if not target.is_file() or target.read_text() != render(path, lang, translate):
            found.append(_shown(target))
    names = {p.name for p in chapter_paths()}
    found += [_shown(p) for p in sorted(folder.glob("*.ipynb"))
              if p.name not in names and _generated(p)]
    return found


def write_all(lang: str = "en", translate: Translate | None = None) -> list[Path]:
    """Write the reader notebook of every chapter; remove generated ones whose chapter is gone."""
    folder = out_dir(lang)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for path in chapter_paths():
        target, text = folder / path.name, render(path, lang, translate)
        if not target.is_file() or target.read_text() != text:
            target.write_text(text)
            written.append(target)
    names = {p.name for p in chapter_paths()}
    for p in folder.glob("*.ipynb"):
        if p.name not in names and _generated(p):
            p.unlink()
    return written


# ----------------------------------------------------------------------------------------------------------------
# the website: launch buttons and the download button serve the reader notebooks

def launch_urls(name: str, folder: str) -> tuple[str | None, str | None]:
    """(Colab URL, Binder URL prefix) of notebook `folder/name` as sphinx-book-theme builds them from
    _config.yml (None when that button is not configured)."""
    config = _config()
    repo, launch = config["repository"], config.get("launch_buttons", {})
    owner_repo = urlsplit(repo["url"]).path.strip("/").removesuffix(".git")
    branch = repo.get("branch", "main")
    book = (repo.get("path_to_book") or "").strip("/")
    path = f"{book}/{folder}/{name}" if book else f"{folder}/{name}"
    colab = launch.get("colab_url")
    binder = launch.get("binderhub_url")
    return (f"{colab.rstrip('/')}/github/{owner_repo}/blob/{branch}/{path}" if colab else None,
            f"{binder.rstrip('/')}/v2/gh/{owner_repo}/{branch}?urlpath=" if binder else None)


def rewrite_page(page: str, name: str, lang: str = "en") -> tuple[str, int]:
    """A chapter page whose Colab and Binder links open notebooks/<lang>/<name> instead of chapters/<name>;
    returns the page and how many links point at the reader notebook (0: the theme changed its links)."""
    colab_old, binder = launch_urls(name, "chapters")
    colab_new, _ = launch_urls(name, f"notebooks/{lang}")
    n = 0
    if colab_old:
        page = page.replace(colab_old, colab_new)
        n += page.count(colab_new)
    if binder:
        pattern = re.compile(rf"({re.escape(html.escape(binder))}|{re.escape(binder)})([^\"'\s]*?)"
                             rf"(chapters)(/|%2F)({re.escape(name)})")

        def repl(m: re.Match) -> str:
            folder = f"notebooks/{lang}" if m.group(4) == "/" else quote(f"notebooks/{lang}", safe="")
            return m.group(1) + m.group(2) + folder + m.group(4) + m.group(5)
        page = pattern.sub(repl, page)
    return page, n


def patch_site(site: Path, lang: str = "en") -> list[str]:
    """Rewrite the launch links of every chapter page of the built site and put the reader notebooks in
    _sources/ (the download button). Returns what it did, one line per chapter."""
    done = []
    for path in chapter_paths():
        rel = path.relative_to(ROOT)
        page_path = site / rel.with_suffix(".html")
        reader = out_dir(lang) / path.name
        if not reader.is_file():
            raise SystemExit(f"{_shown(reader)} is missing: run `make notebooks` first")
        page, n = rewrite_page(page_path.read_text(encoding="utf-8"), path.name, lang)
        if n == 0 and launch_urls(path.name, "chapters")[0]:
            raise SystemExit(f"{page_path}: no Colab link to rewrite (did sphinx-book-theme change its URLs?)")
        page_path.write_text(page, encoding="utf-8")
        source_copy = site / "_sources" / rel
        if not source_copy.is_file():
            raise SystemExit(f"{source_copy}: the download button's copy is missing (html_copy_source off?)")
        shutil.copyfile(reader, source_copy)
        done.append(f"{page_path.relative_to(site)}: launch links -> notebooks/{lang}/{path.name}; "
                    f"{source_copy.relative_to(site)} = the reader notebook")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a reader notebook is stale")
    parser.add_argument("--site", type=Path, help="a built website (_build/html) whose buttons to point at "
                                                  "the reader notebooks")
    parser.add_argument("--lang", default="en", choices=sorted(LABELS))
    args = parser.parse_args(argv)
    if args.site:
        for line in patch_site(args.site, args.lang):
            print(line)
        outdated = stale(args.lang)
        if outdated:
            print("warning: the site now serves reader notebooks that are stale (run `make notebooks`): "
                  + ", ".join(outdated), file=sys.stderr)
        return 0
    if args.check:
        outdated = stale(args.lang)
        for name in outdated:
            print(f"stale: {name}", file=sys.stderr)
        if outdated:
            print("run `make notebooks` (python -m scripts.reader_notebooks) and commit notebooks/", file=sys.stderr)
        return 1 if outdated else 0
    written = write_all(args.lang)
    for p in written:
        print(f"wrote {_shown(p)}")
    print(f"{len(chapter_paths())} reader notebooks in {_shown(out_dir(args.lang))}/ "
          f"({len(written)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
