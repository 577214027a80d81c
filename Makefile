# PathTrail: every target bootstraps .venv from the pinned lock when it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup params ensemble-params repro ensemble test test-slow test-all verify verify-release push pull bench lint clean-venv

setup: $(STAMP)

# The lock is installed with uv (pinned below; about 50 s against pip's 2 min, as it unpacks the
# wheels in parallel), from the same places pip is told to look (PIP_INDEX_URL / PIP_FIND_LINKS, or
# pip's config); where uv cannot be had, pip does it. Both byte-compile the installed packages:
# where PYTHONDONTWRITEBYTECODE is set (as on this project's machines) Python never writes .pyc
# files, so without them every stage, test process and `dvc` call compiled torch, pandas, sklearn
# and DVC from source again (4-7 s a process on 2 cores; about 30 s once here).
UV_VERSION := 0.13.8
PIP_Q := --quiet --disable-pip-version-check
pip_setting = $(or $($(1)),$(shell $(PYTHON) -m pip config get global.$(2) 2>/dev/null))
UV_WHERE = $(foreach u,$(call pip_setting,PIP_INDEX_URL,index-url),--default-index $(u)) \
           $(foreach u,$(call pip_setting,PIP_FIND_LINKS,find-links),--find-links $(u))

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	{ $(BIN)/pip install $(PIP_Q) uv==$(UV_VERSION) && \
	  $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python $(UV_WHERE) -r requirements.lock && \
	  $(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .; } || \
	{ echo "uv could not install the lock; installing it with pip"; \
	  $(BIN)/pip install $(PIP_Q) -r requirements.lock && \
	  $(BIN)/pip install $(PIP_Q) --no-deps --no-build-isolation -e .; }
	touch $(STAMP)

params: $(STAMP)            ## regenerate params.yaml from pipelines/ (as `dvc exp run` does)
	$(BIN)/python -m pathtrail.config

repro: $(STAMP)             ## run the whole pipeline (dvc repro)
	$(BIN)/dvc repro

ENSEMBLE ?= demo
ensemble-params: $(STAMP)   ## regenerate ensemble/params.yaml from pipelines/ensemble/$(ENSEMBLE).yaml
	$(BIN)/python -m pathtrail.ensemble.params $(ENSEMBLE)

ensemble: $(STAMP)          ## the optional stacking ensemble, after the main pipeline (dvc repro ensemble/dvc.yaml)
	$(BIN)/dvc repro ensemble/dvc.yaml

# The tests run stages in their own process as well as in subprocesses (which stages/__init__.py
# pins): the execution contract's CPU level is set before pytest starts, so that numpy, loaded by a
# plugin before any conftest, runs the same kernels in both on an AVX-512 machine too.
TEST_ENV = ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2 OPENBLAS_CORETYPE=Haswell \
	NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR"

test: $(STAMP)              ## the default suite (no slow or GPU tests)
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "not slow and not gpu"

test-slow: $(STAMP)         ## the slow tests only (CI runs them after `make test`)
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "slow and not gpu"

test-all: $(STAMP)          ## everything, slow tests included (GPU tests skip without CUDA)
	$(TEST_ENV) $(BIN)/python -m pytest -q

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

# the scale run's size in `make bench` (the README's 100,000-patch figure: python bench/scale.py)
SCALE_PATCHES ?= 5000

bench: $(STAMP)             ## benchmarks; results go to bench/results/
	$(BIN)/python bench/stain.py
	$(BIN)/python bench/evaluate.py
	$(BIN)/python bench/store.py
	$(BIN)/python bench/validate.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/execution.py
	$(BIN)/python bench/hashing.py
	$(BIN)/python bench/tile.py
	$(BIN)/python bench/optimizations.py
	$(BIN)/python bench/scale.py --patches $(SCALE_PATCHES) --out bench/results/scale_$(SCALE_PATCHES).json

lint: $(STAMP)
	$(BIN)/ruff check src stages tests bench

clean-venv:
	rm -rf $(VENV)
