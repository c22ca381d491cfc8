# raw2gold: `make demo` runs the shop pipeline end to end, `make test` runs the test suite.
# Both bootstrap everything on a fresh machine: uv, the locked Python environment, and Spark's
# Java artifacts (Delta Lake, hadoop-aws) from Maven Central into a cache.

SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := $(or $(shell command -v uv 2>/dev/null),.tools/bin/uv)
VENV := .venv
CACHE := $(or $(RAW2GOLD_CACHE_DIR),$(HOME)/.cache/raw2gold)
export UV_COMPILE_BYTECODE := 1
export SPARK_LOCAL_IP := 127.0.0.1

.PHONY: demo test env jars java lint typecheck clean help

help:
	@echo "make demo   # set up, then run examples/shop through Airflow into ./lake"
	@echo "make test   # set up, then run the whole test suite"

.tools/bin/uv:
	@echo "uv not found: installing uv $(UV_VERSION) into .tools/ with pip"
	$(PYTHON) -m venv .tools && .tools/bin/pip install -q uv==$(UV_VERSION)

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --all-groups
	@touch $@

env: $(VENV)/.synced

java:
	@scripts/check-java.sh

# Resolved once per pinned set: the marker's name carries a hash of the pins' module.
JARS_MARKER := $(CACHE)/jars-$(shell sha1sum src/raw2gold/transform/jars.py 2>/dev/null | cut -c1-12).ok

$(JARS_MARKER): | env java
	$(VENV)/bin/python -m raw2gold.transform.jars --s3
	@mkdir -p $(CACHE) && touch "$@"

jars: env java $(JARS_MARKER)

demo: jars
	$(VENV)/bin/raw2gold run examples/shop/pipeline.yaml --lake ./lake

# Two processes by default: the suite waits on JVMs, servers and schedulers more than it computes
# (on 2 cores: 29 min instead of 36). Each test file runs whole on one worker
# (its module fixtures run once). TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
test: jars
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile

lint: env
	$(VENV)/bin/ruff format --check src tests dags bench deploy
	$(VENV)/bin/ruff check src tests dags bench deploy

typecheck: env
	$(VENV)/bin/mypy

clean:
	rm -rf lake .raw2gold .pytest_cache
