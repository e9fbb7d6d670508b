# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FHIR_VALIDATE := ../shared/tools/fhir-validate

.PHONY: run test install install-test bench bench-rest bench-messaging bench-writes migrate clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "sip_hub needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

run: $(VENV)/.installed
	$(BIN)/sip-hub serve

migrate: $(VENV)/.installed
	$(BIN)/sip-hub migrate

# The independent FHIR validators (Node) run from the tests when node is on the machine.
test: $(VENV)/.installed-test
	@if command -v npm >/dev/null 2>&1 && [ -d $(FHIR_VALIDATE) ] && [ ! -d $(FHIR_VALIDATE)/node_modules ]; then \
		npm install --prefix $(FHIR_VALIDATE) --no-audit --no-fund --silent; fi
	$(BIN)/pytest

# The REST benchmark, the end-to-end messaging benchmark, the store's write transactions
# (bench/results/).
bench: bench-rest bench-messaging bench-writes

bench-rest: $(VENV)/.installed-test
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/run.py

bench-messaging: $(VENV)/.installed-test
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/messaging.py

bench-writes: $(VENV)/.installed-test
	$(BIN)/python bench/writes.py

clean:
	rm -rf $(VENV) var .pytest_cache
