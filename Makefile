# The one-command demo and the tests, from a fresh clone: `make demo`, `make test`; `make docs` serves the docs.
# Needs python3 (3.11+) with venv, and node with npm.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo demo-swa test docs setup clean

## demo: set up, then run the emulator, the function (local host) and the web sample until Ctrl-C
demo: setup
	@$(PY) scripts/demo.py

## demo-swa: the same behind the Static Web Apps CLI (sign-in emulated, row-level security on) until Ctrl-C
demo-swa: setup
	@$(PY) scripts/demo_swa.py

## test: set up, then run the whole test suite (the browser test needs /usr/bin/chromium)
test: setup
	$(PY) -m pytest -q

## docs: serve the documentation site (docs/, mkdocs.yml) at http://127.0.0.1:8000, rebuilt on each edit
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

## setup: the virtual environment with requirements-dev.txt, and web/'s npm package
setup: $(VENV)/.installed web/node_modules/.installed

# Stamp files: a second run skips what is already installed, and redoes it when the lists change.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

web/node_modules/.installed: web/package.json web/package-lock.json
	cd web && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

## clean: remove what setup and the demo made
clean:
	rm -rf $(VENV) web/node_modules .emulator site
