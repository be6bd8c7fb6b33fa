# gpuprune: two commands for a fresh machine, `make demo` and `make test`.
PYTHON ?= python3.11
TORCH_VERSION ?= 2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
EXTRAS := test,pocl,triton

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/install-system-packages.sh
	@scripts/install-system-packages.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# CPU installs pin torch first; an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q --disable-pip-version-check "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[$(EXTRAS)]"
	@touch $(STAMP)

demo: setup
	$(BIN)/gpuprune targets

lint: setup
	$(BIN)/ruff check src tests

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
