"""The set-up cell's REF: a course pins its term to a branch, a tag or a commit of the book.

The rendered cell runs as Colab would run it (a fake `google.colab` module, a fresh working directory)
against a local git repository of three commits (the file:// URL through ONEHOT_REPO_URL, no network),
whose `utils/runtime.py` is a stand-in that says which commit it is and whose requirements.txt is
empty, so the cell installs nothing and imports no torch. It must fetch what REF names (a branch, a
tag, a full commit hash), import `utils` from that checkout, fetch again when REF changes and not when
it stays the same, fail with git's message on a ref that does not exist, and leave a repository that
it did not fetch alone.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scripts.setup_cell import ROOT, render

FORM = re.compile(r'^REF = "([^"]*)"  # @param \{type:"string"\}$', re.MULTILINE)  # a Colab form field

RUNNER = """
import sys, types
sys.modules["google.colab"] = types.ModuleType("google.colab")  # what Colab's kernel has imported
exec(compile(open(sys.argv[1]).read(), "setup-cell", "exec"))
import utils.runtime
print("VERSION", utils.runtime.VERSION, "DEVICE", device, "ROOT", ROOT)
"""


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", *args], cwd=cwd,
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> dict[str, str]:
    """Commits one (tag v1), two (branch fall) and three (main); returns their hashes and the URL."""
    path = tmp_path_factory.mktemp("origin")
    git("-c", "init.defaultBranch=main", "init", "-q", cwd=path)
    (path / "utils").mkdir()
    (path / "utils" / "__init__.py").write_text("")
    (path / "requirements.txt").write_text("# nothing to install\n")
    commits = {}
    for version in ("one", "two", "three"):
        (path / "utils" / "runtime.py").write_text(f'VERSION = "{version}"\n\ndef setup(seed):\n    return "cpu"\n')
        git("add", ".", cwd=path)
        git("commit", "-q", "-m", version, cwd=path)
        commits[version] = git("rev-parse", "HEAD", cwd=path)
        if version == "one":
            git("tag", "v1", cwd=path)
        if version == "two":
            git("branch", "fall", cwd=path)
    return {**commits, "url": path.as_uri()}


def run_cell(tmp_path: Path, origin: dict, ref: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    cell = FORM.sub(f'REF = "{ref}"  # @param {{type:"string"}}', render())
    (tmp_path / "cell.py").write_text(cell)
    (tmp_path / "run.py").write_text(RUNNER)
    content = tmp_path / "content"  # Colab's working directory
    content.mkdir(exist_ok=True)
    env = {**os.environ, "ONEHOT_REPO_URL": origin["url"], "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "cell.py")], cwd=cwd or content,
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def test_ref_is_a_colab_form_field_defaulting_to_the_configured_branch():
    found = FORM.findall(render())
    branch = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"].get("branch", "main")
    assert found == [branch], f"the set-up cell needs one line 'REF = \"{branch}\"  # @param {{type:\"string\"}}'"


def test_ref_takes_a_branch_a_tag_and_a_commit(tmp_path, origin):
    clone = tmp_path / "content" / "onehot-to-clip"
    for ref, version in (("main", "three"), ("v1", "one"), ("fall", "two"), (origin["one"], "one"),
                         (origin["two"], "two"), ("main", "three")):
        done = run_cell(tmp_path, origin, ref)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"VERSION {version} DEVICE cpu ROOT {clone}" in done.stdout, (ref, done.stdout)
        assert f"The book at {ref}: commit {origin[version][:7]}" in done.stdout, (ref, done.stdout)
        assert git("rev-parse", "HEAD", cwd=clone) == origin[version]


def test_the_same_ref_is_not_fetched_again(tmp_path, origin):
    first = run_cell(tmp_path, origin, "v1")
    assert first.returncode == 0 and "The book at v1" in first.stdout, first.stdout + first.stderr
    head = tmp_path / "content" / "onehot-to-clip" / ".git" / "HEAD"
    stamp = head.stat().st_mtime_ns
    again = run_cell(tmp_path, origin, "v1")
    assert again.returncode == 0 and "VERSION one" in again.stdout, again.stdout + again.stderr
    assert "The book at" not in again.stdout and head.stat().st_mtime_ns == stamp, "fetched again for the same REF"


@pytest.mark.parametrize("ref", ["no-such-tag", "abbreviated"])
def test_a_ref_that_does_not_exist_fails_with_gits_message(tmp_path, origin, ref):
    ref = origin["one"][:7] if ref == "abbreviated" else ref  # git fetch needs the full hash
    done = run_cell(tmp_path, origin, ref)
    assert done.returncode != 0 and "CalledProcessError" in done.stderr, done.stdout + done.stderr
    assert f"couldn't find remote ref {ref}" in done.stderr, done.stderr


def test_a_repository_found_above_is_used_as_it_is(tmp_path, origin):
    """Run from inside a checkout (a folder uploaded to Colab, or a notebook opened in it): REF is not fetched."""
    assert run_cell(tmp_path, origin, "v1").returncode == 0
    chapters = tmp_path / "content" / "onehot-to-clip" / "chapters"
    chapters.mkdir()
    done = run_cell(tmp_path, origin, "main", cwd=chapters)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "VERSION one" in done.stdout and "The book at" not in done.stdout, done.stdout
