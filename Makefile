# Two entry points (see README): `make run` and `make test`. Both create .venv from nothing.
# torch==2.13.0 goes in first so nothing later pulls a multi-GB CUDA build. Each installs only
# what it needs: the main job the `zoo` extra (real MNIST digits, FID-MNIST), the tests also
# the `dev` and `triton` extras (Triton runs its kernel tests under its CPU interpreter).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(VENV)/.torch:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	touch $@

$(VENV)/.installed-run: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -q -e ".[zoo]"
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -q -e ".[zoo,dev,triton,peers]"
	touch $@

setup: $(VENV)/.installed-test

run: $(VENV)/.installed-run
	$(BIN)/ditcache bench

test: $(VENV)/.installed-test
	$(BIN)/pytest -q

.PHONY: setup run test
