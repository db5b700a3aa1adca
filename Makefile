# Two entry points (see README): `make run` and `make test`. Both create .venv from
# nothing. torch==2.13.0 goes in first so nothing later pulls a multi-GB CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,triton]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/ditcache bench

test: $(STAMP)
	$(BIN)/pytest -q

.PHONY: setup run test
