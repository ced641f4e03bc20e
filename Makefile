# Every target sets up its own virtual environment, so each works on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-plain test-fast test-e2e lint typecheck bench clean constraints docs
# The tests that run a downloader (manifests, the API server and the sidecar's own surface do not)
PLAIN_TESTS = $(filter-out tests/test_manifests.py tests/test_apiserver.py tests/test_seed_dropin.py \
	tests/test_runtime_commands.py tests/test_bench_harness.py,$(wildcard tests/test_*.py))

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --constraint constraints.txt -e '.[test]'
	touch $(STAMP)

## constraints: pin what is installed now (after changing a dependency in pyproject.toml: rm -rf .venv first)
constraints: $(STAMP)
	{ sed -n '1,3p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^aibrix-model-runtime'; } > constraints.new
	mv constraints.new constraints.txt

setup: $(STAMP)

## demo: start a local S3 server, seed it with a small model, download it with aibrix-download, show the result
demo: $(STAMP)
	$(PY) -m tests.demo

## test: lint, type-check and run the test suite (the heavy Ray/vLLM tests are `make test-e2e`)
test: lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider

## test-e2e: real Ray + vLLM (CPU build) end-to-end tests, in their own venv (.venv-e2e)
test-e2e:
	bash tests/e2e/setup.sh
	.venv-e2e/bin/python -m pytest -q -rP -p no:cacheprovider -m e2e tests/e2e

## test-plain: the downloader's tests once more with every backend's fast path off (DOWNLOADER_FAST_PATHS=0 in
## every downloader the tests start; tests of a fast path itself are skipped), as CI runs them
test-plain: $(STAMP)
	TESTS_FAST_PATHS=off $(PY) -m pytest -q -p no:cacheprovider $(PLAIN_TESTS)

## test-fast: the suite without the slow end-to-end tests
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

## docs: regenerate the settings tables of docs/downloader.md, docs/sidecar.md and docs/runtime.md from each
## package's OPTIONS table (a test fails when a page and its table differ)
SETTINGS_PAGES = docs/downloader.md=downloader.config:OPTIONS docs/sidecar.md=sidecar.config:OPTIONS \
	docs/runtime.md=runtime.config:OPTIONS
docs: $(STAMP)
	$(PY) -m downloader.options $(SETTINGS_PAGES)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check downloader sidecar runtime tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy

## bench: the download benchmark against s5cmd, boto3 and AIBrix (see BENCHMARKS.md); options in BENCH_ARGS,
## e.g. make bench BENCH_ARGS="--small-files --mem-limited"
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) bench/run_bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-e2e .demo build *.egg-info

## reliability: the long seeded fault campaigns (240 randomized trials, 50 kills per source, disk full, 8 processes); see RELIABILITY.md
.PHONY: reliability
RELIABILITY_SEED ?= 1
reliability: $(STAMP)
	mkdir -p build
	$(PY) -m tests.reliability all --trials 240 --kills 50 --seed $(RELIABILITY_SEED) --json build/reliability-results.json

## validate-apiserver: every CRD and custom object of every overlay through a real API server (apiextensions-apiserver built from Debian's Go source packages, with Debian's etcd; built once into build/apiserver), server-side dry run, strict field validation
.PHONY: validate-apiserver
APISERVER_DIR ?= build/apiserver
validate-apiserver: $(STAMP)
	bash tests/apiserver/build.sh $(APISERVER_DIR)
	APISERVER_DIR=$(APISERVER_DIR) $(PY) -m pytest -q -p no:cacheprovider tests/test_apiserver.py
