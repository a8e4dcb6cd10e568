# Two commands do everything on a fresh machine:
#   make run   - all five notebooks at full length (papermill, in place), then the README table
#   make test  - unit tests, then every notebook for one epoch (pytest --nbmake)
# The virtual environment is created and filled on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
READY  := $(VENV)/.installed

.PHONY: run test unit smoke lint seeds bench clean-venv

$(READY): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(READY)

run: $(READY)
	$(PY) -m utils.run_notebooks

test: lint unit smoke

unit: $(READY)
	$(PY) -m pytest tests

smoke: $(READY)
	$(PY) -m pytest --nbmake --nbmake-timeout=900 notebooks

lint: $(READY)
	$(PY) -m ruff check utils tests conftest.py

seeds: $(READY)
	$(PY) -m utils.batch notebooks/05_final.ipynb --seeds 0 1 2 3 4 --jobs 3 --summary results/seeds.json --plot images/seeds.png
	$(PY) -m utils.report

bench: $(READY)
	$(PY) -m utils.bench
	$(PY) -m utils.report

clean-venv:
	rm -rf $(VENV)
