# The two commands a new user needs (see README.md):
#   make book   install everything and build the website into _build/html
#   make test   install everything and run every test (unit, notebooks under nbval, site build, browser)
# and one for authors:
#   make execute  re-execute the chapter notebooks in place (outputs in git = what the code produces)
PY ?= python3

.PHONY: install book site test execute

install:
	bash scripts/install.sh

site:
	$(PY) -m scripts.site_assets
	rm -rf _build/html _build/.doctrees
	$(PY) -c "from jupyter_book.cli.main import main; main()" build . --warningiserror --keep-going

book: install site

test: install site
	$(PY) -m pytest tests chapters --nbval -p no:cacheprovider

execute:
	$(PY) -m scripts.execute_notebooks
