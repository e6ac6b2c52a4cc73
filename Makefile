# The project's commands. Everything needed is installed by `make setup` (idempotent, fast when done).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= CodeGoat24/UnifiedReward-2.0-qwen3vl-2b
# Empty: the config's (defaults.toml: 127.0.0.1:8000; PROFILE=shared listens on 0.0.0.0).
HOST ?=
PORT ?=
# Serving profiles merged over the defaults: shared, data-parallel (serving/profiles/), comma-separated.
PROFILE ?=
# Built artefacts (the tiny checkpoint, logs) stay in the work tree, ignored by git.
export UNIFIEDREWARD_CACHE ?= $(CURDIR)/.cache

.PHONY: setup lock serve demo test test-unit docs docs-serve bench bench-load soak clean

setup:
	@bash tools/setup_env.sh

## rewrite requirements/{cpu,gpu}.lock from a fresh unpinned resolution (tools/lock.sh); then `make test`, and commit them if it passes
lock:
	@bash tools/lock.sh

## serve MODEL (default: the real 2B model; MODEL=tiny for the test checkpoint) on HOST:PORT with PROFILE; ARGS= more vLLM flags
serve: setup
	$(PY) -m unifiedreward.serving --model $(MODEL) $(if $(PROFILE),--profile $(PROFILE)) $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT)) $(ARGS)

## start the tiny server, score one item per task through the client, print the verdicts, stop
demo: setup
	$(PY) examples/demo.py

## unit tests, then end-to-end tests against the real vLLM server (started once per session)
test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

## the docs site (mkdocs, material theme, API reference from the docstrings) into site/; any warning fails it
docs: setup
	$(VENV)/bin/mkdocs build --strict

## the docs site live on http://127.0.0.1:8001 while you edit docs/
docs-serve: setup
	$(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8001

## side-by-side baselines, the front end's CPU per pair, routing over replicas, tenants, a load sweep, the client's feed rate: results/{compare,frontend,replicas,tenants,load,feed}.*
bench: setup
	$(PY) -m benchmarks.compare $(BENCH_ARGS)
	$(PY) -m benchmarks.frontend
	$(PY) -m benchmarks.replicas
	$(PY) -m benchmarks.tenants
	$(PY) -m benchmarks.load --serve-tiny --concurrency 1 8 32 64 --rate 1 2 --requests 32
	$(PY) -m benchmarks.feed

## load test: BASE_URL=http://host:port/v1 for a running endpoint, else a tiny server for the run
bench-load: setup
	$(PY) -m benchmarks.load $(if $(BASE_URL),--base-url $(BASE_URL),--serve-tiny) $(BENCH_ARGS)

## soak run (not part of `make test`): 10 min at a steady rate, 5 % bad requests, two tiny replicas behind nginx
soak: setup
	$(PY) -m benchmarks.soak $(if $(BASE_URL),--base-url $(BASE_URL)) $(SOAK_ARGS)

clean:
	rm -rf .cache results .pytest_cache site
