"""The set-up cell that opens every chapter, generated from one template.

The repository URL is read from `_config.yml` (the only place it is written), and so is the default
of the cell's `REF` (a Colab form field): `repository.branch`, which also names the ref the website's
Colab buttons open. A course that pins a term sets `repository.branch` to its tag, runs this script,
commits and tags that commit (book/how_to_use.md). In Colab the cell fetches REF with `git fetch
--depth 1 <url> <ref>`, which takes a branch, a tag or a full commit hash alike, and fetches again
when REF changes. Run `python -m scripts.setup_cell` to (re)write the cell into every chapter listed
in `_toc.yml`; `tests/test_book.py` checks that every chapter's cell equals `render()`, and
`tests/test_setup_cell.py` runs the cell against a local repository at a branch, a tag and a commit.
"""
from __future__ import annotations

import string
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
SETUP_TAGS = ["setup-cell", "nbval-ignore-output", "hide-input"]  # hide-input: collapsed on the website

# Which requirements.txt lines the Colab branch reads: "name==pin  # min X" (see requirements.txt).
MIN_LINE = r"^([\w.-]+)==(\S+) +# min ([\d.]+)"
# The environment variable that points the set-up cell at another repository (a fork, a local clone).
REPO_URL_VARIABLE = "ONEHOT_REPO_URL"

TEMPLATE = string.Template('''\
# Set-up (the same in every chapter). Locally: find the repository root and make it importable.
# In Colab: fetch the repository at REF, then install at its pinned version each package the book
# needs that is missing or older than its minimum ("# min" in requirements.txt). Then seed, pick a device.
import importlib.metadata as md, os, pathlib, re, subprocess, sys

REF = "$ref"  # @param {type:"string"}
# REF (Colab only): the book's version to fetch, a branch, a tag or a full commit hash; a course
# sets its term's tag here. $variable may point at a fork or a local clone.
REPO_URL = os.environ.get("$variable", "$url")
here, name = pathlib.Path.cwd(), "$name"
candidates = [here, *here.parents, here / name]  # the repository: here, above, or in here/name
ROOT = next((p for p in candidates if (p / "utils" / "runtime.py").is_file()), None)
if "google.colab" in sys.modules:
    ROOT = ROOT or here / name
    fetched = ROOT / ".git" / "onehot-ref"  # the REF this cell fetched last
    if ROOT == here / name and (not fetched.is_file() or fetched.read_text() != REF):  # not yet, or another REF
        ROOT.mkdir(exist_ok=True)
        git = ["git", "-C", str(ROOT)]
        for args in (["init", "-q"], ["fetch", "-q", "--depth", "1", REPO_URL, REF], ["checkout", "-qf", "FETCH_HEAD"]):
            subprocess.run(git + args, check=True)
        fetched.write_text(REF)
        commit = subprocess.run(git + ["log", "-1", "--format=%h of %cs"], capture_output=True, text=True).stdout
        print(f"The book at {REF}: commit {commit.strip()}")

    def release(version):  # "2.8.0+cu126" -> (2, 8, 0)
        return tuple(int(x) for x in re.match(r"\\d+(\\.\\d+)*", version)[0].split("."))

    def too_old(dist, low):  # missing, or older than the book's minimum
        try:
            return release(md.version(dist)) < release(low)
        except md.PackageNotFoundError:
            return True

    requirements = (ROOT / "requirements.txt").read_text()
    needs = re.findall(r"$min_line", requirements, re.M)  # (name, pin, min)
    todo = [f"{dist}=={pin}" for dist, pin, low in needs if too_old(dist, low)]
    if todo:
        print("Installing", *todo)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *todo], check=True)
        norm = lambda d: d.lower().replace("-", "_")  # noqa: E731
        names = {norm(t.split("==")[0]) for t in todo}
        loaded = [m for m, ds in md.packages_distributions().items()
                  if m in sys.modules and names & set(map(norm, ds))]
        if loaded:  # the old version stays in memory until the session restarts
            print("Already imported:", *loaded, "- Runtime > Restart session, then run all again.")
elif ROOT is None:
    raise RuntimeError(f"Run this notebook inside the book's repository (no utils/ above {here}).")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.runtime import setup
device = setup(seed=0)''')


def repository() -> tuple[str, str]:
    """(url, branch) of the book's public repository, from `_config.yml`."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = config["repository"]
    return repo["url"].rstrip("/"), repo.get("branch", "main")


def render() -> str:
    url, branch = repository()
    return TEMPLATE.substitute(url=url, ref=branch, name=url.rsplit("/", 1)[-1], variable=REPO_URL_VARIABLE,
                               min_line=MIN_LINE)


def chapter_paths() -> list[Path]:
    """Chapter notebooks in `_toc.yml` order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [entry["file"] for part in toc.get("parts", []) for entry in part.get("chapters", [])]
    return [ROOT / f"{f}.ipynb" for f in files if f.startswith("chapters/")]


def setup_cell_index(nb: nbformat.NotebookNode) -> int:
    """Index of the cell tagged `setup-cell`; exactly one must exist."""
    found = [i for i, c in enumerate(nb.cells) if "setup-cell" in c.get("metadata", {}).get("tags", [])]
    if len(found) != 1:
        raise ValueError(f"expected exactly one cell tagged 'setup-cell', found {len(found)}")
    return found[0]


def write(path: Path) -> bool:
    """Put the rendered set-up cell into the notebook at `path`; True if it changed."""
    nb = nbformat.read(path, as_version=4)
    cell = nb.cells[setup_cell_index(nb)]
    source = render()
    changed = cell.source != source or cell.metadata.get("tags") != SETUP_TAGS
    cell.source, cell.metadata["tags"] = source, list(SETUP_TAGS)
    if changed:
        nbformat.write(nb, path)
    return changed


if __name__ == "__main__":
    for nb_path in (Path(a) for a in sys.argv[1:]) if sys.argv[1:] else chapter_paths():
        print(("updated " if write(nb_path) else "unchanged ") + str(nb_path.relative_to(ROOT)))
