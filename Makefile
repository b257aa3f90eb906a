# The two commands a new user needs (see README.md):
#   make book   install everything and build the website into _build/html
#   make test   install everything and run every test (unit, notebooks under nbval, site build, browser)
#   make check  the same without executing the notebooks (a few minutes: for authors between edits)
#   make seeds  before a release: every chapter again with other seeds, its asserts only (SEED_SHIFTS)
# and for readers and authors:
#   make lab      open the chapters in JupyterLab (installs the Python packages only; e.g. LAB_ARGS=--no-browser):
#                 the reader notebooks in notebooks/en by default; authors open the MyST sources with LAB_DIR=chapters
#   make execute  re-execute the chapter notebooks in place (outputs in git = what the code produces)
#   make notebooks  rewrite notebooks/en/ (the chapters without MyST, for Colab and JupyterLab) after any chapter edit
#   make student  the student edition in _build/student/ (checkable exercises' solutions removed) and the key
#   make mutate   mutation testing of utils/ (MODULE=vlm for one module, AGAIN=1 its survivors only; hours for all):
#                 writes tests/MUTATION.md
#
# Python: the active virtual environment if there is one ($VIRTUAL_ENV), else the project's own .venv,
# which `make install` creates with python3 (3.11+; another with BASE_PYTHON=python3.12). PY=... overrides.
# A virtual environment keeps its Python in bin/python, on Windows in Scripts/python.exe.
ifeq ($(OS),Windows_NT)
VENV_PYTHON = Scripts/python.exe
else
VENV_PYTHON = bin/python
endif
ifdef VIRTUAL_ENV
PY ?= $(VIRTUAL_ENV)/$(VENV_PYTHON)
else
PY ?= .venv/$(VENV_PYTHON)
endif
export PY

.PHONY: install install-python book site test check seeds lab execute notebooks student mutate

install:
	bash scripts/install.sh

install-python:  # the Python packages only: no Chromium, no npm, no sudo
	bash scripts/install.sh python

site:
	$(PY) -m scripts.site_assets
	rm -rf _build/html _build/.doctrees
	$(PY) -c "from jupyter_book.cli.main import main; main()" build . --warningiserror --keep-going
	$(PY) -m scripts.reader_notebooks --site _build/html

book: install site

# Two (or more: one per core) pytest-xdist workers, each with one torch thread, each running whole files
# (a notebook's cells in order in one kernel); conftest.py starts the longest chapters first.
TEST_WORKERS ?= auto
PYTEST_PARALLEL = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: install site
	OMP_NUM_THREADS=1 $(PY) -m pytest tests chapters --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider $(PYTEST_PARALLEL)

check: install site
	OMP_NUM_THREADS=1 $(PY) -m pytest tests -p no:cacheprovider $(PYTEST_PARALLEL)

# Every chapter re-run with every seed shifted (utils.runtime.shift_seeds): other data draws, initial
# weights and batches. Outputs are not compared (--nbval-lax), the asserts in the cells run: a target that
# holds for one seed only fails here. About 21 minutes per shift on a 2-core machine.
SEED_SHIFTS ?= 1 2
seeds: install-python
	status=0; for shift in $(SEED_SHIFTS); do \
	  echo "== every seed shifted by $$shift"; \
	  ONEHOT_SEED_SHIFT=$$shift OMP_NUM_THREADS=1 $(PY) -m pytest chapters --nbval-lax -p no:cacheprovider $(PYTEST_PARALLEL) || status=1; \
	done; exit $$status

# Opens the reader notebooks (notebooks/en: no MyST, so glued numbers, citations and folded solutions read
# right); LAB_DIR=chapters opens the MyST sources the website is built from, which authors edit.
LAB_DIR ?= notebooks/en
lab: install-python
	$(PY) -m jupyterlab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/$(LAB_DIR) $(LAB_ARGS)

execute: install-python
	$(PY) -m scripts.execute_notebooks
	$(PY) -m scripts.reader_notebooks

# The reader notebooks notebooks/en/*.ipynb, rewritten from chapters/ (committed; tests fail when stale).
notebooks: install-python
	$(PY) -m scripts.reader_notebooks

# _build/student/: chapters/ for students (no solution of a checkable exercise), key/ for the instructor.
student: install-python
	$(PY) -m scripts.student_edition $(STUDENT_ARGS)

# Mutation testing (scripts/mutate.py, setup.cfg): not part of `make test` or CI, too slow; the report it
# writes, tests/MUTATION.md, is committed. The tool is pinned here, not in requirements.txt: readers never need it.
MUTMUT = mutmut==3.8.1
MODULE ?=
mutate: install-python
	$(PY) -m pip install -q $(MUTMUT)
	OMP_NUM_THREADS=1 $(PY) -m scripts.mutate $(if $(AGAIN),--survivors )$(MODULE)
