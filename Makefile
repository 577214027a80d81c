# PathTrail: every target bootstraps .venv from the pinned lock when it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup params repro test test-slow test-all verify verify-release push pull bench lint clean-venv

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

params: $(STAMP)            ## regenerate params.yaml from pipelines/ (as `dvc exp run` does)
	$(BIN)/python -m pathtrail.config

repro: $(STAMP)             ## run the whole pipeline (dvc repro)
	$(BIN)/dvc repro

test: $(STAMP)              ## the default suite (no slow or GPU tests)
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

test-slow: $(STAMP)         ## the slow tests only (CI runs them after `make test`; about 17 min on 2 cores)
	$(BIN)/python -m pytest -q -m "slow and not gpu"

test-all: $(STAMP)          ## everything, slow tests included (GPU tests skip without CUDA)
	$(BIN)/python -m pytest -q

verify: $(STAMP)            ## check card, artifacts, dvc.lock and audit trail agree
	$(BIN)/pathtrail verify

verify-release: $(STAMP)    ## also require a valid signature by a key in keys/trusted/
	$(BIN)/pathtrail verify --release

# DVC remote for push / pull: REMOTE=name, else .dvc/config's core.remote (README, "Sharing artifacts")
REMOTE ?=
DVC_REMOTE = $(if $(REMOTE),-r $(REMOTE))

push: $(STAMP)              ## upload the DVC-tracked outputs and data of this checkout to the remote
	$(BIN)/dvc push $(DVC_REMOTE)

pull: $(STAMP)              ## download them (no stage runs; then `make verify`)
	$(BIN)/dvc pull $(DVC_REMOTE)

bench: $(STAMP)             ## benchmarks; results go to bench/results/
	$(BIN)/python bench/stain.py
	$(BIN)/python bench/evaluate.py
	$(BIN)/python bench/validate.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/execution.py

lint: $(STAMP)
	$(BIN)/ruff check src stages tests bench

clean-venv:
	rm -rf $(VENV)
