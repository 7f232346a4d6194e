# ML Updates: the few commands a reader needs. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
QUARTO_MIN := 1.9
# pytest: unit tests + nbval over every notebook (figures compared) + book checks,
# spread over both cores; --dist loadfile keeps a notebook's cells on one kernel.
PYTEST_ARGS := -n 2 --dist loadfile --nbval --nbval-current-env \
	--nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 300 \
	--durations 5 tests notebooks

.PHONY: help env test lint notebook notebooks bench seeds book check clean

help:
	@echo "make test                 set up .venv if needed, run every test (CI runs this)"
	@echo "make book                 set up .venv, execute the notebooks, render with Quarto >= $(QUARTO_MIN)"
	@echo "make notebook NB=01-transformer   re-execute one notebook (safely)"
	@echo "make notebooks            re-execute every notebook (safely)"
	@echo "make check                the book checks alone (seconds)"
	@echo "make lint                 ruff"
	@echo "make bench                every notebook's time in reference units, and peak memory"
	@echo "make seeds                every assertion under seeds 0-4 and the alternative kernels"
	@echo "                          (NB=02-llm for one notebook; SEEDS=0-4; ~30 min for all)"

# The environment: exact pins in pyproject.toml, everything else pinned by constraints.txt.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

env: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

check: $(STAMP)
	$(PY) -m mlupdates.bookcheck .

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks conftest.py
	$(VENV)/bin/ruff format --check src tests benchmarks conftest.py

notebook: $(STAMP)
	@test -n "$(NB)" || { echo "usage: make notebook NB=01-transformer"; exit 2; }
	$(PY) -m mlupdates.execution notebooks/$(NB).ipynb

notebooks: $(STAMP)
	$(PY) -m mlupdates.execution $(NOTEBOOKS)

bench: $(STAMP)
	$(PY) benchmarks/notebooks.py $(NOTEBOOKS)

# Every chapter under seeds 0-4 and under the alternative float kernels; replaces nothing.
SEEDS ?= 0-4
seeds: $(STAMP)
	$(PY) -m mlupdates.seeds --seeds $(SEEDS) $(if $(NB),notebooks/$(NB).ipynb,$(NOTEBOOKS))

book: $(STAMP)
	@quarto=$$(bash tools/find-quarto.sh $(PY) $(QUARTO_MIN)) || exit 1; \
	$(MAKE) --no-print-directory notebooks && \
	"$$quarto" render && echo "book written to _book/ (serve it: $(PY) -m http.server -d _book)"

clean:
	rm -rf _book .quarto .pytest_cache
