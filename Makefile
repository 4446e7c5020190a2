# Two commands set everything up on a fresh clone: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser demo dashboard test lint format bench clean

setup: $(STAMP)

# Re-install only when the project's dependencies change. pip on this machine takes torch
# and torchvision from local wheels; elsewhere it downloads them.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The browser test (tests/test_dashboard_browser.py) drives Debian's chromium through
# chromium-driver. Installed once, where apt-get works (CI runs as root); elsewhere it skips.
browser:
	@test -x /usr/bin/chromedriver || { command -v apt-get >/dev/null \
		&& (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| echo "note: chromium/chromium-driver not installed; the browser test will skip"; }

# The main job end to end on an embedded local Ray: train (Ray Train), sweep, summary, report.
demo: setup
	$(BIN)/iamt run configs/demo.yaml --out runs/demo

dashboard: setup
	$(BIN)/iamt dashboard --runs runs

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Two pytest-xdist workers, each taking whole test files (module fixtures such as a Ray cluster
# are built once): much of the suite waits on Ray processes, so 2 workers fit a 2-core machine.
TEST_WORKERS ?= 2
test: setup lint browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# Ratio benchmarks against the compute floor (benchmarks/README.md); ≤ 20 minutes on 2 cores.
bench: setup
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
