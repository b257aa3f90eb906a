"""The set-up cell that opens every chapter, generated from one template.

The repository URL is read from `_config.yml` (the only place it is written). Run
`python -m scripts.setup_cell` to (re)write the cell into every chapter listed in `_toc.yml`;
`tests/test_book.py` checks that every chapter's cell equals `render()`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
SETUP_TAGS = ["setup-cell", "nbval-ignore-output", "hide-input"]  # hide-input: collapsed on the website

# Packages a chapter needs beyond what Google Colab ships (module name -> PyPI name).
COLAB_EXTRAS = {"einops": "einops", "gensim": "gensim", "open_clip": "open_clip_torch",
                "timm": "timm", "safetensors": "safetensors"}

TEMPLATE = '''\
# Set-up (the same in every chapter). Locally: make the repository root importable.
# In Colab: fetch the book's repository and install only what Colab lacks. Then seed and pick the device.
import importlib.util, pathlib, subprocess, sys

REPO_URL, BRANCH = "{url}", "{branch}"
if "google.colab" in sys.modules:
    ROOT = pathlib.Path("/content/{name}")
    if not ROOT.exists():
        subprocess.run(["git", "clone", "-q", "--depth", "1", "-b", BRANCH, REPO_URL, str(ROOT)], check=True)
    pins = dict(l.split("#")[0].strip().split("==") for l in (ROOT / "requirements.txt").open() if "==" in l.split("#")[0])
    missing = [pkg for mod, pkg in {extras!r}.items() if importlib.util.find_spec(mod) is None]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *(f"{{p}}=={{pins[p]}}" for p in missing)], check=True)
else:
    ROOT = next((p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents] if (p / "utils" / "runtime.py").is_file()), None)
    if ROOT is None:
        raise RuntimeError("Run this notebook from inside the book's repository (utils/ was not found above " + str(pathlib.Path.cwd()) + ").")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.runtime import setup
device = setup(seed=0)'''


def repository() -> tuple[str, str]:
    """(url, branch) of the book's public repository, from `_config.yml`."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = config["repository"]
    return repo["url"].rstrip("/"), repo.get("branch", "main")


def render() -> str:
    url, branch = repository()
    return TEMPLATE.format(url=url, branch=branch, name=url.rsplit("/", 1)[-1], extras=COLAB_EXTRAS)


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
