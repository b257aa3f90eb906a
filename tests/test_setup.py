"""Set-up tests: what a newcomer meets before the first chapter runs.

- The book's source discovery ignores environment folders inside the checkout (`.venv`, `venv`, `env`,
  `.tox`, `**/site-packages`, `node_modules`): a minimal book with the exclude patterns of `_config.yml`
  builds beside such folders full of Markdown that Sphinx cannot read, and fails without the patterns.
- `requirements.txt` gives every third-party package the book imports a pin and a minimum (the Colab
  set-up cell upgrades what is older than the minimum).
- The Colab set-up cell, run in a fresh virtual environment that has no copy of the repository, clones
  it, installs only what is missing or too old at the pinned versions, imports `utils`, and does nothing
  more on a second run (`test_colab_setup_cell`).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# A Markdown file Sphinx cannot read: the front matter of huggingface_hub's model-card template,
# the file that stopped a newcomer's build (`ConstructorError ... {{ card_data }}`).
BAD_MARKDOWN = "---\n{{ card_data }}\n---\n\n# {{ model_name }}\n"
ENV_FOLDERS = [".venv/lib/python3.11/site-packages/huggingface_hub/templates",
               "venv/lib/python3.12/site-packages/pkg", "env/share/doc", ".tox/py311/lib",
               "lib/python3.11/site-packages/pkg", "node_modules/some-package"]


def build_minimal_book(tmp_path: Path, exclude_patterns: list[str]) -> subprocess.CompletedProcess:
    """Build a one-page book whose checkout holds environment folders with unreadable Markdown.

    It takes `only_build_toc_files` from the real `_config.yml`, so it discovers sources as the book does."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    book = tmp_path / "book"
    book.mkdir()
    (book / "_config.yml").write_text(yaml.safe_dump({
        "title": "environment folders are not sources",
        "only_build_toc_files": config["only_build_toc_files"],
        "exclude_patterns": exclude_patterns,
        "execute": {"execute_notebooks": "off"},
    }))
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\n")
    (book / "intro.md").write_text("# Intro\n\nThe only page.\n")
    for folder in ENV_FOLDERS:
        (book / folder).mkdir(parents=True)
        (book / folder / "README.md").write_text(BAD_MARKDOWN)
        (book / folder / "notes.ipynb").write_text("{not a notebook")
    return subprocess.run(
        [sys.executable, "-c", "from jupyter_book.cli.main import main; main()",
         "build", str(book), "--warningiserror", "--keep-going"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)


def test_environment_folders_are_not_book_sources(tmp_path):
    patterns = yaml.safe_load((ROOT / "_config.yml").read_text())["exclude_patterns"]
    run = build_minimal_book(tmp_path, patterns)
    log = run.stdout + run.stderr
    assert run.returncode == 0, f"the build read an environment folder as a book source:\n{log[-3000:]}"
    assert "card_data" not in log and "site-packages" not in log, log[-3000:]
    assert (tmp_path / "book" / "_build" / "html" / "intro.html").is_file()


def test_without_the_patterns_the_build_fails(tmp_path):
    """The control: the folders above do break a build that does not exclude them, so the test above can fail."""
    patterns = yaml.safe_load((ROOT / "_config.yml").read_text())["exclude_patterns"]
    env_patterns = {".venv", "venv", "env", ".tox", "**/site-packages", "node_modules", "**/node_modules"}
    assert env_patterns <= set(patterns), f"_config.yml exclude_patterns lacks {sorted(env_patterns - set(patterns))}"
    run = build_minimal_book(tmp_path, [p for p in patterns if p not in env_patterns])
    assert run.returncode != 0, "a build that reads .venv/.../README.md should fail"
    assert "card_data" in run.stdout + run.stderr
