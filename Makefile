# gpuprune: two commands for a fresh machine, `make demo` and `make test`.
PYTHON ?= python3.11
TORCH_VERSION ?= 2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
EXTRAS := test,pocl,triton,ray

.PHONY: setup demo test lint bench bench-quick clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/install-system-packages.sh
	@scripts/install-system-packages.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# CPU installs pin torch first; an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q --disable-pip-version-check "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[$(EXTRAS)]"
	@# the dense runtimes gpuprune bench compares with (OpenVINO, ONNX Runtime): own step, so a
	@# failed pyclblast build below cannot take them along
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[runtimes]" \
		|| echo "gpuprune setup: OpenVINO/ONNX Runtime not installed; bench skips those baselines"
	@# optional: the CLBlast baseline builds from source against libclblast-dev
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[bench]" \
		|| echo "gpuprune setup: pyclblast not installed (needs libclblast-dev); bench skips CLBlast"
	@# optional: the torchvision/timm model zoos for tests/nn/test_zoo.py. --no-deps keeps torch
	@# at $(TORCH_VERSION) (their wheels pin another); tests/zoo_helpers.py explains the import shim
	@$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps \
		"torchvision==0.29.1" "timm==1.0.31" \
		|| echo "gpuprune setup: torchvision/timm not installed; the zoo tests skip"
	@touch $(STAMP)

demo: setup
	@# Rerunning continues the same run folder: finished cells are kept, so it is quick.
	$(BIN)/gpuprune run configs/demo.yaml -o runs/demo

lint: setup
	$(BIN)/ruff check src tests

test: lint
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/gpuprune bench --readme README.md

bench-quick: setup
	$(BIN)/gpuprune bench --quick

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
