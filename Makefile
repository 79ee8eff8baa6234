# Everything a fresh machine needs is installed by these targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
NODE_DIR := tests/node
export PIEWIRE_TEST_TIME_SCALE ?= 1

.PHONY: install run test lint unit bench clean redis-server

install: $(VENV)/.installed $(NODE_DIR)/node_modules/.installed redis-server

# The cluster tests start a real redis-server; Debian's package provides it.
redis-server:
	@command -v redis-server >/dev/null || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }
	@redis-server --version

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: $(VENV)/.installed
	$(BIN)/piewire serve

LINTED := piewire tests $(wildcard bench)

lint: $(VENV)/.installed
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy --strict piewire

test: install lint
	$(BIN)/pytest -p no:cacheprovider $(PYTEST_ARGS)

unit: $(VENV)/.installed
	$(BIN)/pytest -p no:cacheprovider tests/unit $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(NODE_DIR)/node_modules piewire-data
