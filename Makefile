# The two commands of the README:
#   make run   - set up (.venv, torch 2.13.0 CPU first, the plugin with PyQt6) and open napari
#   make test  - set up what is missing (venv, test extras, Xvfb packages) and run the whole suite headless
# Both are idempotent: a second run only does what changed (pyproject.toml is the stamp's input).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -c constraints.txt
TORCH := torch==2.13.0
XVFB_DEBS := xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0
CACHE := $(CURDIR)/.cache/test-home
TEST_ENV := XDG_CONFIG_HOME=$(CACHE)/config XDG_CACHE_HOME=$(CACHE)/cache XDG_DATA_HOME=$(CACHE)/data \
	NAPARI_UNET_MODELS_DIR=$(CACHE)/models MPLBACKEND=Agg PYTHONDONTWRITEBYTECODE=1

.PHONY: run test lint bench xvfb-deps clean

run: $(VENV)/.stamp-run
	$(VENV)/bin/napari-unet view $(FILE)

test: $(VENV)/.stamp-test xvfb-deps
	rm -rf $(CACHE) && mkdir -p $(CACHE)
	$(TEST_ENV) $(PY) -m ruff check src tests benchmarks scripts
	$(TEST_ENV) $(VENV)/bin/lint-imports --no-cache
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.stamp-test
	$(PY) -m ruff check src tests benchmarks scripts
	$(VENV)/bin/lint-imports --no-cache

# benchmarks are run by hand, never in CI (MONAI only for the comparison)
bench: $(VENV)/.stamp-test
	$(PIP) -q monai psutil
	$(PY) benchmarks/bench_predict.py

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.stamp-torch: | $(PY)
	$(PIP) -q $(TORCH)
	touch $@

# the distribution was called napari-unet until 0.3: an old copy (or its egg-info left on the
# source path by a build) would register the plugin a second time under the old name
FORMER := napari-unet
UNINSTALL_FORMER := rm -rf src/napari_unet.egg-info; \
	$(PY) -m pip show -q $(FORMER) >/dev/null 2>&1 && $(PY) -m pip uninstall -y -q $(FORMER) || true

$(VENV)/.stamp-run: pyproject.toml constraints.txt $(VENV)/.stamp-torch
	@$(UNINSTALL_FORMER)
	$(PIP) -q -e ".[pyqt6]"
	touch $@

$(VENV)/.stamp-test: pyproject.toml constraints.txt $(VENV)/.stamp-torch
	@$(UNINSTALL_FORMER)
	$(PIP) -q -e ".[pyqt6,testing]"
	touch $@ $(VENV)/.stamp-run

# Debian packages for the virtual display that pytest-xvfb starts
xvfb-deps:
	@missing=""; for p in $(XVFB_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

clean:
	rm -rf $(VENV) .cache build dist src/*.egg-info .pytest_cache .ruff_cache
