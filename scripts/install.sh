#!/usr/bin/env bash
# Install everything the book needs, idempotently: Python packages (requirements.txt), Debian's
# Chromium for the browser test, and the npm packages that serve MathJax and the widget manager offline.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

echo "== Python packages (requirements.txt)"
"$PY" -m pip install --quiet --disable-pip-version-check -r requirements.txt

echo "== Chromium (browser test)"
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq chromium >/dev/null
fi
chromium --version

echo "== npm packages (MathJax, ipywidgets HTML manager)"
if ! command -v npm >/dev/null 2>&1; then
  echo "npm is missing: install Node.js (e.g. 'apt-get install nodejs npm') and run again" >&2
  exit 1
fi
if [ ! -d node_modules/mathjax ] || [ ! -d node_modules/@jupyter-widgets/html-manager ] \
   || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
fi
