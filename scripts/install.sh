#!/usr/bin/env bash
# Install what the book needs, idempotently:
#   bash scripts/install.sh          everything (make book, make test, make check): the Python packages
#                                    (requirements.txt) into a virtual environment, Debian's Chromium for the
#                                    browser test, and the npm packages that serve MathJax and the widget
#                                    manager offline;
#   bash scripts/install.sh python   the Python packages only (make lab, make execute): no Chromium, no npm,
#                                    no sudo (unless Debian's python3-venv is missing).
#
# Python: PY (set by the Makefile) is the interpreter of the environment to install into: the active
# virtual environment's, or the project's own .venv/bin/python, which this script creates when it does
# not exist (with BASE_PYTHON, default python3, which must be 3.11 or newer). A second run skips pip when
# requirements.txt is unchanged since the last install into that environment (a stamp file there keyed on
# its sha256) and every pin is still installed at its version.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
case "$what" in
  all|python) ;;
  *) echo "usage: bash scripts/install.sh [all|python]" >&2; exit 2 ;;
esac
if [ -z "${PY:-}" ]; then  # as the Makefile chooses: the active virtual environment, else .venv
  if [ -n "${VIRTUAL_ENV:-}" ]; then PY=$VIRTUAL_ENV/bin/python; else PY=.venv/bin/python; fi
fi
BASE_PYTHON=${BASE_PYTHON:-python3}

sudo_() {  # as root, or through sudo; without sudo, say what to run
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else echo "This step needs root and there is no sudo here: run as root: $*" >&2; return 1
  fi
}

if [ ! -x "$PY" ]; then
  case "$PY" in
    */bin/python) venv=${PY%/bin/python} ;;
    */Scripts/python.exe) venv=${PY%/Scripts/python.exe} ;;  # Windows (Git Bash, MSYS2)
    *) echo "PY=$PY is not an executable Python" >&2; exit 1 ;;
  esac
  if ! command -v "$BASE_PYTHON" >/dev/null 2>&1 \
     || ! "$BASE_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "The book needs Python 3.11 or newer to make $venv; '$BASE_PYTHON' is $("$BASE_PYTHON" --version 2>&1 || echo missing)." >&2
    echo "Install one (e.g. 'apt-get install python3') or name it: make book BASE_PYTHON=python3.11" >&2
    exit 1
  fi
  echo "== Virtual environment $venv ($("$BASE_PYTHON" --version))"
  err=$(mktemp)
  if ! "$BASE_PYTHON" -m venv "$venv" 2>"$err"; then
    # Debian and Ubuntu ship venv's pip bootstrap (ensurepip) in a separate package
    if grep -q ensurepip "$err" && command -v apt-get >/dev/null 2>&1; then
      rm -rf "$venv"
      ver=$("$BASE_PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
      sudo_ apt-get update -qq
      sudo_ apt-get install -y -qq "python$ver-venv" >/dev/null
      "$BASE_PYTHON" -m venv "$venv"
    else
      cat "$err" >&2
      exit 1
    fi
  fi
  rm -f "$err"
fi

echo "== Python packages (requirements.txt) for $PY"
prefix=$("$PY" -c 'import sys; print(sys.prefix)')
stamp="$prefix/.onehot-requirements.sha256"
want=$("$PY" -c 'import hashlib; print(hashlib.sha256(open("requirements.txt", "rb").read()).hexdigest())')  # no sha256sum on macOS
pins_installed() {  # every "name==version" of requirements.txt is installed at that version (+local labels ok)
  "$PY" - <<'EOF'
import importlib.metadata as md, re, sys
wrong = []
for line in open("requirements.txt"):
    m = re.match(r"([\w.-]+)==(\S+)", line)
    if m:
        try:
            have = md.version(m[1])
        except md.PackageNotFoundError:
            have = None
        if have is None or have.split("+")[0] != m[2]:
            wrong.append(f"{m[1]} {have or 'missing'} (pinned {m[2]})")
if wrong:
    print("  not as pinned:", "; ".join(wrong))
sys.exit(1 if wrong else 0)
EOF
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && pins_installed; then
  echo "  up to date (requirements.txt unchanged since the last install here)"
else
  "$PY" -m pip install --quiet --disable-pip-version-check -r requirements.txt
  echo "$want" > "$stamp"
fi

if [ "$what" = python ]; then
  exit 0
fi

echo "== Chromium (browser test)"
if ! command -v chromium >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "Chromium is missing and this system has no apt-get: install Chromium with your package manager" >&2
    echo "(it must be on PATH as 'chromium'); it is needed by make book, make test and make check only." >&2
    echo "To read and run the chapters, make lab needs the Python packages alone." >&2
    exit 1
  fi
  sudo_ apt-get update -qq
  sudo_ apt-get install -y -qq chromium >/dev/null
fi
chromium --version

echo "== npm packages (MathJax, ipywidgets HTML manager)"
if ! command -v npm >/dev/null 2>&1; then
  echo "npm is missing: install Node.js (e.g. 'apt-get install nodejs npm') and run again;" >&2
  echo "it is needed by make book, make test and make check only (make lab needs the Python packages alone)." >&2
  exit 1
fi
if [ ! -d node_modules/mathjax ] || [ ! -d node_modules/@jupyter-widgets/html-manager ] \
   || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
fi
