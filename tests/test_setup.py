"""Set-up tests: what a newcomer meets before the first chapter runs.

- The book's source discovery ignores environment folders inside the checkout (`.venv`, `venv`, `env`,
  `.tox`, `**/site-packages`, `node_modules`): a minimal book with the exclude patterns of `_config.yml`
  builds beside such folders full of Markdown that Sphinx cannot read, and fails without the patterns.
- `requirements.txt` gives every third-party package the book imports a pin and a minimum (the Colab
  set-up cell upgrades what is older than the minimum).
- The Colab set-up cell, run in a fresh virtual environment that has no copy of the repository, clones
  it, installs only what is missing or too old at the pinned versions, imports `utils`, and does nothing
  more on a second run (`test_colab_setup_cell`).
- `make` uses the active virtual environment, else the project's own `.venv` (on Windows, its
  `Scripts/python.exe`).
"""
from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
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
        capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)


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


# --- pins and minimums -------------------------------------------------------------------------------

def pins_and_minimums() -> dict[str, tuple[str, str]]:
    """{distribution: (pin, min)} from requirements.txt lines `name==pin  # min X`, as the set-up cell reads them."""
    from scripts.setup_cell import MIN_LINE
    found = re.findall(MIN_LINE, (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    return {name: (pin, low) for name, pin, low in found}


def imported_modules() -> dict[str, set[str]]:
    """Top-level modules imported by utils/ and the chapters, outside the standard library and this repository
    (an import inside `try: ... except ImportError` is optional and not counted)."""
    local = {p.name for p in ROOT.iterdir() if p.is_dir()} | {p.stem for p in ROOT.glob("*.py")}
    found: dict[str, set[str]] = {}

    def scan(source: str, where: str) -> None:
        source = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
        tree = ast.parse(source)
        optional = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) and any(  # try: import x / except ImportError
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in t.handlers)
            for n in ast.walk(ast.Module(body=t.body, type_ignores=[]))}
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    found.setdefault(top, set()).add(where)

    for path in sorted((ROOT / "utils").rglob("*.py")):
        scan(path.read_text(), str(path.relative_to(ROOT)))
    for path in sorted((ROOT / "chapters").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                scan("".join(cell["source"]), path.name)
    return found


def release(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.match(r"\d+(\.\d+)*", version)[0].split("."))


def test_every_imported_package_has_a_pin_and_a_minimum():
    """The Colab set-up cell installs only packages with a `# min` note, so every third-party import needs one."""
    table = {canonical(name): v for name, v in pins_and_minimums().items()}
    assert {"transformers", "einops", "torch", "ipywidgets"} <= set(table), sorted(table)
    owners = importlib.metadata.packages_distributions()
    missing = []
    for module, where in sorted(imported_modules().items()):
        dists = owners.get(module)
        assert dists, f"{module} (imported in {sorted(where)}) is not installed: pin it in requirements.txt"
        if not any(canonical(d) in table for d in dists):
            missing.append(f"{module} ({dists[0]}, imported in {', '.join(sorted(where))})")
    assert not missing, "no '==pin  # min X' line in requirements.txt for: " + "; ".join(missing)
    for name, (pin, low) in table.items():
        assert release(low) <= release(pin), f"{name}: min {low} is above the pin {pin}"
        assert canonical(name) != "transformers" or release(low) >= (5,), "transformers 4.x has other key names"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- the Colab set-up cell, in a Colab-like environment -----------------------------------------------
# Colab has torch, numpy, transformers... preinstalled but not the book. The stand-in: a fresh virtual
# environment that sees this environment's packages (pip included; read-only, through a .pth file)
# except `ftfy` (missing) and `einops` (installed there at an old version), with `google.colab` faked
# so the cell's Colab branch runs, and ONEHOT_REPO_URL pointing at a repository made from this checkout.

MISSING, OLD = "ftfy", ("einops", "0.6.1")  # small, pure-Python packages: a quick install


def make_origin(path: Path) -> str:
    """A git repository (branch main) holding this checkout's requirements.txt and utils/; its file:// URL."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "requirements.txt", "utils"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        if (ROOT / name).is_file() and "__pycache__" not in name:
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, path / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "book"]):
        subprocess.run(git + args, cwd=path, check=True, capture_output=True)
    return path.as_uri()


def make_colab_python(path: Path) -> Path:
    """A fresh venv whose 'preinstalled' packages are this environment's, less MISSING and OLD's package."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, capture_output=True)
    python = path / "bin" / "python"
    own = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip())
    hidden = {MISSING, OLD[0]}
    for dist in (MISSING, OLD[0]):
        hidden |= {f.parts[0] for f in importlib.metadata.distribution(dist).files}
    view = path / "preinstalled"
    view.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        top = entry.name.split("-")[0].lower()
        if entry.name not in hidden and top not in {h.lower() for h in hidden} and entry.name != "__pycache__":
            (view / entry.name).symlink_to(entry)
    # addsitedir also runs the view's own .pth files, as the packages expect
    (own / "preinstalled.pth").write_text(f"import site; site.addsitedir({str(view)!r})\n")
    subprocess.run([python, "-m", "pip", "install", "-q", f"{OLD[0]}=={OLD[1]}"], check=True, capture_output=True)
    return python


RUN_CELL = """
import sys, types
sys.modules["google.colab"] = types.ModuleType("google.colab")  # what Colab's kernel has imported
exec(compile(open(sys.argv[1]).read(), "setup-cell", "exec"))
import importlib.metadata, utils
print("ROOT", ROOT)
print("UTILS", pathlib.Path(utils.__file__).parent)
print("VERSIONS", importlib.metadata.version("ftfy"), importlib.metadata.version("einops"))
"""


def test_colab_setup_cell(tmp_path):
    from scripts.setup_cell import render
    pins = {canonical(n): pin for n, (pin, _) in pins_and_minimums().items()}
    origin = tmp_path / "origin"
    origin.mkdir()
    url = make_origin(origin)
    python = make_colab_python(tmp_path / "venv")
    check = subprocess.run([python, "-c", f"import {MISSING}"], capture_output=True, check=False)
    assert check.returncode != 0, f"{MISSING} should be missing from the Colab stand-in"
    cell, runner = tmp_path / "cell.py", tmp_path / "run.py"
    cell.write_text(render())
    runner.write_text(RUN_CELL)
    content = tmp_path / "content"  # Colab's working directory
    content.mkdir()
    env = {**os.environ, "ONEHOT_REPO_URL": url, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)

    def run() -> str:
        done = subprocess.run([python, str(runner), str(cell)], cwd=content, env=env, capture_output=True,
                              text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    first = run()
    clone = content / "onehot-to-clip"
    assert (clone / ".git").is_dir() and (clone / "utils" / "runtime.py").is_file(), first
    assert f"ROOT {clone}" in first and f"UTILS {clone / 'utils'}" in first, first
    installing = next(line for line in first.splitlines() if line.startswith("Installing"))
    assert set(installing.split()[1:]) == {f"{MISSING}=={pins[MISSING]}", f"{OLD[0]}=={pins[OLD[0]]}"}, (
        f"installs only what is missing or too old, at the pins: {installing}")
    assert f"VERSIONS {pins[MISSING]} {pins[OLD[0]]}" in first, first
    assert "device: cpu" in first or "device:" in first, first

    head = (clone / ".git" / "HEAD").stat().st_mtime_ns
    second = run()
    assert "Installing" not in second, f"the second run installed again:\n{second}"
    assert (clone / ".git" / "HEAD").stat().st_mtime_ns == head, "the second run cloned again"
    assert f"UTILS {clone / 'utils'}" in second and f"VERSIONS {pins[MISSING]} {pins[OLD[0]]}" in second, second


# --- which Python make uses -----------------------------------------------------------------------------

@pytest.mark.parametrize("windows", [False, True], ids=["posix", "windows"])
@pytest.mark.parametrize("active", [None, "/opt/some-env"])
def test_make_uses_the_active_environment_else_dot_venv(active, windows):
    """Without an active virtual environment make uses (and install.sh creates) ./.venv; with one, that one.
    On Windows (OS=Windows_NT, set by Windows itself) a virtual environment's Python is Scripts/python.exe."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PY", "MAKEFLAGS", "MAKELEVEL", "OS")}
    if active:
        env["VIRTUAL_ENV"] = active
    if windows:
        env["OS"] = "Windows_NT"
    plan = subprocess.run(["make", "-n", "book"], cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    python = (active or ".venv") + ("/Scripts/python.exe" if windows else "/bin/python")
    assert f"{python} -m scripts.site_assets" in plan and "bash scripts/install.sh" in plan, plan
    shown = subprocess.run(["make", "-s", "--no-print-directory", "-f", "-", "show"], cwd=ROOT, env=env, text=True,
                           input="include Makefile\nshow:\n\t@echo $$PY\n", capture_output=True, check=True).stdout
    assert shown.strip() == python, "install.sh is handed the same Python (exported PY)"


# --- make lab installs the Python packages only ---------------------------------------------------------

def _path_without(tmp_path: Path, hidden: set[str]) -> str:
    """A PATH holding every program of the current PATH except those named in `hidden`."""
    folder = tmp_path / "bin"
    folder.mkdir(parents=True)
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for program in sorted(Path(directory).iterdir()):
            link = folder / program.name
            if program.name in hidden or link.exists() or not (program.is_file() and os.access(program, os.X_OK)):
                continue
            link.symlink_to(program)
    return str(folder)


def _install(tmp_path: Path, hidden: set[str], *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": _path_without(tmp_path, hidden), "PY": sys.executable}
    return subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_make_lab_installs_without_chromium_npm_or_sudo(tmp_path):
    """`make lab` and `make execute` run `install.sh python`: the Python packages, nothing that needs a browser,
    Node.js or root."""
    for target in ("lab", "execute"):
        plan = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        assert "bash scripts/install.sh python" in plan and "install.sh\n" not in plan, plan
    run = _install(tmp_path, {"chromium", "npm", "node", "sudo", "apt-get"}, "python")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Python packages" in run.stdout and "Chromium" not in run.stdout and "npm" not in run.stdout


def test_full_install_without_apt_says_what_to_install(tmp_path):
    run = _install(tmp_path, {"chromium", "apt-get", "sudo"})
    assert run.returncode == 1
    assert "install Chromium with your package manager" in run.stderr and "make lab" in run.stderr, run.stderr
    assert _install(tmp_path / "x", set(), "everything").returncode == 2  # an unknown argument is refused
