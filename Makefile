# imagegen-worker: `make demo` runs the pipeline end to end, `make test` runs every test.
# Both install what they need (uv, the locked dependencies) into this folder first.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.tools/bin/uv)
RUN := $(UV) run --frozen

.PHONY: help install services tools node-deps lint typecheck test test-unit test-integration demo bench compose-config clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(CURDIR)/.tools/bin/uv:
	@echo "installing uv $(UV_VERSION) into .tools/"
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

install: $(UV) ## create .venv from uv.lock
	$(UV) sync --frozen

services: ## start local Redis/PostgreSQL if they are down
	@scripts/ensure-services.sh

tools: ## system tools the tests use (docker-compose to validate the compose file; prometheus)
	@command -v docker-compose >/dev/null || { \
	  echo "installing Debian's docker-compose (used offline: 'config' only)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq docker-compose >/dev/null; }
	@command -v prometheus >/dev/null || { \
	  echo "installing Debian's prometheus (the tests run the binary; its service is not used)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq prometheus >/dev/null; }

node-deps: ## npm packages of the Node.js tests (a webhook verifier, a plain Redis consumer)
	@command -v npm >/dev/null || { echo "npm is needed for the Node.js tests" >&2; exit 1; }
	@[ tests/node/node_modules/.package-lock.json -nt tests/node/package-lock.json ] || \
	  npm ci --prefix tests/node --no-audit --no-fund --loglevel=error

lint: install ## ruff check + format check
	$(RUN) ruff check .
	$(RUN) ruff format --check .

typecheck: install ## mypy --strict
	$(RUN) mypy worker api_schema/src simulator devtools

test: install services tools node-deps lint typecheck ## lint, types, unit, integration and fault tests
	$(RUN) pytest

test-unit: install ## only the tests that need no services
	$(RUN) pytest tests/unit

demo: install services ## run the pipeline end to end (simulator unless MODELLIX_API_KEY is set)
	$(RUN) python -m devtools demo

bench: install services ## every benchmark (see `python -m devtools bench --help`)
	$(RUN) python -m devtools bench all

compose-config: tools ## validate docker-compose.yml offline
	IMAGEGEN_FLOWER_BASIC_AUTH=$${IMAGEGEN_FLOWER_BASIC_AUTH:-check:check} \
	IMAGEGEN_REDIS_PRODUCER_PASSWORD=$${IMAGEGEN_REDIS_PRODUCER_PASSWORD:-check-producer-0123} \
	IMAGEGEN_REDIS_WORKER_PASSWORD=$${IMAGEGEN_REDIS_WORKER_PASSWORD:-check-worker-0123} \
	IMAGEGEN_API_TOKENS=$${IMAGEGEN_API_TOKENS:-check:check-token-0123456789abcdef} \
	IMAGEGEN_METRICS_PASSWORD=$${IMAGEGEN_METRICS_PASSWORD:-check-metrics-0123} \
	docker-compose -f docker-compose.yml config --quiet

clean: ## remove local state (not .venv)
	rm -rf demo-output bench-results .imagegen .pytest_cache .mypy_cache .ruff_cache
