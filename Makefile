# `make up` and `make test` are the README's Quick start; everything they need is installed here.
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 1

.PHONY: up test lint typecheck contracts check

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

up: $(VENV)/.installed
	$(PY) manage.py up

test: $(VENV)/.installed
	scripts/ensure-test-deps
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy controlplane runs workers jobs

contracts: $(VENV)/.installed
	$(VENV)/bin/lint-imports

# The rules .ci/run checks before the tests, for use before a commit.
check: lint typecheck contracts
