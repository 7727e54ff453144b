# compacs: two commands on a fresh machine.
#   make serve   set up .venv and run a node on the embedded default (./data, SQLite, port 11112)
#   make test    set up .venv with the test extras, install DCMTK and Orthanc when missing,
#                fetch the OHIF viewer (make ohif),
#                run every test

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATA   ?= ./data
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`; each takes whole test files (their module fixtures
# start a node once). TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2

.PHONY: serve test bench bench-storage bench-dicomweb bench-ohif lint format deps-system clean ohif

# The OHIF viewer (issue 17): npm's prebuilt @ohif/app, its dist/ extracted under .cache/
# (gitignored, never committed, kept by `make clean`: 200 MB fetched once). The node serves
# it on [viewer] port (default 8043) with an app-config.js of its own; compacs.web.viewer's
# OHIF_VERSION names the same version.
OHIF_VERSION := 3.13.2
OHIF_DIR     := .cache/ohif/$(OHIF_VERSION)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

$(OHIF_DIR)/.fetched:
	@command -v npm >/dev/null 2>&1 || { \
		echo "make ohif: npm is missing: install Debian's package npm (apt-get install npm)" >&2; \
		exit 1; }
	rm -rf $(OHIF_DIR) $(OHIF_DIR).tmp && mkdir -p $(OHIF_DIR).tmp
	npm pack --silent @ohif/app@$(OHIF_VERSION) --pack-destination $(OHIF_DIR).tmp >/dev/null
	tar -xzf $(OHIF_DIR).tmp/ohif-app-$(OHIF_VERSION).tgz -C $(OHIF_DIR).tmp package/dist
	@# the built viewer, not sources: the page, its configuration, the bundles, the codecs
	@cd $(OHIF_DIR).tmp/package/dist && for f in index.html app-config.js; do \
		[ -s $$f ] || { echo "make ohif: @ohif/app@$(OHIF_VERSION) has no dist/$$f" >&2; exit 1; }; \
	done && ls app.bundle.*.js >/dev/null && ls *.wasm >/dev/null
	mv $(OHIF_DIR).tmp/package/dist $(OHIF_DIR) && rm -rf $(OHIF_DIR).tmp
	touch $@

ohif: $(OHIF_DIR)/.fetched

serve: $(VENV)/.installed ohif
	$(BIN)/compacs serve --data-dir $(DATA)

# Debian's dcmtk provides the independent DICOM clients the tests talk to the node with;
# Debian's orthanc is the real downstream PACS of the gateway tests and a benchmark peer;
# Debian's orthanc-dicomweb is its DICOMweb plugin, the QIDO-RS peer of test_dicomweb_qido;
# Debian's postgresql provides the server the scale-out tests start in a temporary folder.
# A temporary policy-rc.d keeps orthanc's and postgresql's packages from starting a system
# service (the tests start their own instances on free 127.0.0.1 ports); it is removed
# afterwards, and the services those packages enabled are disabled again: the host's boot
# is left as it was (a system orthanc would take 8042, compacs's web port).
# Debian's chromium is the browser the web tests drive with Playwright.
# Debian's dicom3tools provides dciodvfy, the IOD validator the fidelity tests read output with.
# Debian's libopenjp2-tools provides opj_dump, which reads the JPEG 2000 / HTJ2K coding style
# (progression order, resolutions, TLM) of what the HTJ2K RPCL tests fetch.
deps-system:
	@missing=""; \
	command -v storescu >/dev/null 2>&1 || missing="$$missing dcmtk"; \
	[ -x /usr/sbin/Orthanc ] || command -v Orthanc >/dev/null 2>&1 || missing="$$missing orthanc"; \
	[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing="$$missing orthanc-dicomweb"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	[ -x /usr/lib/chromium/chromium ] || missing="$$missing chromium"; \
	command -v dciodvfy >/dev/null 2>&1 || missing="$$missing dicom3tools"; \
	command -v opj_dump >/dev/null 2>&1 || missing="$$missing libopenjp2-tools"; \
	command -v strace >/dev/null 2>&1 || missing="$$missing strace"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian's$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		created=""; \
		if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' | $$SUDO tee /usr/sbin/policy-rc.d >/dev/null; \
			$$SUDO chmod +x /usr/sbin/policy-rc.d; created=1; \
		fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
		status=$$?; \
		for service in orthanc postgresql; do \
			case " $$missing " in *" $$service "*) \
				$$SUDO systemctl disable --quiet $$service >/dev/null 2>&1 \
					|| $$SUDO update-rc.d $$service disable >/dev/null 2>&1 || true;; \
			esac; \
		done; \
		[ -z "$$created" ] || $$SUDO rm -f /usr/sbin/policy-rc.d; \
		exit $$status; \
	fi

test: $(VENV)/.installed-test deps-system ohif
	$(BIN)/ruff check src tests bench tools
	$(BIN)/ruff format --check src tests bench tools
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@ $(VENV)/.installed $(VENV)/.installed-test

bench: $(VENV)/.installed-bench deps-system
	cd bench && PYTHONPATH=.. ../$(BIN)/python run.py $(BENCH_ARGS)

# issue 16: bytes stored on a mixed real corpus, compacs (default, archive tier) beside
# Orthanc-JLS; writes bench/results/<time>/storage.md
bench-storage: $(VENV)/.installed-bench deps-system
	cd bench && PYTHONPATH=.. ../$(BIN)/python -W ignore storage_corpus.py $(BENCH_ARGS)

# issue 17: STOW-RS, QIDO-RS and WADO-RS, compacs beside Orthanc's DICOMweb plugin (plain
# and JPEG-LS); writes bench/results/<time>/dicomweb.md
bench-dicomweb: $(VENV)/.installed-bench deps-system
	cd bench && PYTHONPATH=.. ../$(BIN)/python -W ignore dicomweb.py $(BENCH_ARGS)

# issue 17: time to first image and to a whole 200-slice series in OHIF (headless chromium),
# JPEG-LS- and HTJ2K-stored
bench-ohif: $(VENV)/.installed-bench deps-system ohif
	cd bench && PYTHONPATH=.. ../$(BIN)/python -W ignore ohif_timing.py $(BENCH_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench tools
	$(BIN)/python -m mypy

format: $(VENV)/.installed-test
	$(BIN)/ruff format src tests bench tools
	$(BIN)/ruff check --fix src tests bench tools

# keeps .cache/ (the OHIF build: fetched once, 200 MB); rm -rf .cache to fetch it again
clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
