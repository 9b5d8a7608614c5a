# Two commands for a fresh machine: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
POLICY ?= config/policy.yaml

.PHONY: install tools run sidecar test lint typecheck unit bench bench-pacing soak chaos policy-table clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages that tests drive: chromium (the status page in a real browser) and promtool (the alert rules).
# Installed where missing and apt-get may run (root); elsewhere those tests skip and say so (.ci/run makes a
# missing browser a failure).
TOOLS := chromium:chromium promtool:prometheus
tools:
	@missing=""; for tool in $(TOOLS); do command -v $${tool%%:*} >/dev/null || missing="$$missing $${tool#*:}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing the Debian packages$$missing"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) \
			|| echo "could not install$$missing: the tests that need them skip"; \
	else echo "missing Debian packages$$missing (apt-get install$$missing): the tests that need them skip"; fi

# The whole local stack: simulated upstreams, the sidecar on config/policy.local.yaml, the inbox backend.
run: install
	$(PY) -m inbox_backend.stack

# The sidecar alone, on the production policy (or POLICY=...).
sidecar: install
	$(PY) -m proxy --policy $(POLICY)

lint: install
	$(VENV)/bin/ruff check proxy inbox_backend tests bench

typecheck: install
	$(VENV)/bin/mypy

unit: install
	$(VENV)/bin/pytest -q

# tools first, then the rest (also under make -j: the browser tests need chromium installed before they start).
test: tools
	$(MAKE) lint typecheck unit

# README.md's policy reference table, from proxy/policy/schema.py (tests/policy/test_schema.py fails when stale).
policy-table: install
	$(PY) -m proxy.policy.reference --readme README.md

bench: install
	$(PY) -m bench.overhead

# What rate limiting costs per request (none, memory, Redis) and how well two replicas on one Redis keep a rate.
bench-pacing: install
	$(PY) -m bench.pacing

# 10 minutes of mixed traffic with faults through a sidecar: do its RSS, fds and tasks stay flat? (SOAK_ARGS=...)
soak: install
	$(PY) -m bench.soak $(SOAK_ARGS)

# The inbox under faults in three modes (legacy, direct, sidecar), as a report with plots (CHAOS_ARGS=--quick ...).
BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

chaos: $(BENCH_STAMP)
	$(PY) -m bench.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
