# compacs: two commands on a fresh machine.
#   make serve   set up .venv and run a node on the embedded default (./data, SQLite, port 11112)
#   make test    set up .venv with the test extras, install DCMTK when missing, run every test

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATA   ?= ./data
PYTEST_ARGS ?=

.PHONY: serve test bench lint format deps-system deps-bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

serve: $(VENV)/.installed
	$(BIN)/compacs serve --data-dir $(DATA)

# Debian's dcmtk provides the independent DICOM clients the tests talk to the node with.
deps-system:
	@if ! command -v storescu >/dev/null 2>&1; then \
		echo "installing Debian's dcmtk (storescu, echoscu, findscu, movescu, getscu, storescp)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dcmtk >/dev/null; \
	fi

test: $(VENV)/.installed-test deps-system
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/python -m pytest $(PYTEST_ARGS)

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@ $(VENV)/.installed $(VENV)/.installed-test

# Debian's orthanc is a peer of the benchmark; policy-rc.d keeps its package from starting
# a system service (the benchmark starts its own instances on free 127.0.0.1 ports).
deps-bench: deps-system
	@if ! command -v Orthanc >/dev/null 2>&1; then \
		echo "installing Debian's orthanc"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		[ -e /usr/sbin/policy-rc.d ] || printf '#!/bin/sh\nexit 101\n' | $$SUDO tee /usr/sbin/policy-rc.d >/dev/null; \
		$$SUDO chmod +x /usr/sbin/policy-rc.d; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq orthanc >/dev/null; \
	fi

bench: $(VENV)/.installed-bench deps-bench
	cd bench && ../$(BIN)/python run.py $(BENCH_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench

format: $(VENV)/.installed-test
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
