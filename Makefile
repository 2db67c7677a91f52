# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Everything runs inside .venv, installed by uv from uv.lock (every version pinned).

SHELL := /bin/bash
PYTHON ?= python3
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON ?= $(PYTHON)
UV := $(or $(shell command -v uv 2>/dev/null),.tools/bin/uv)
UV_VERSION := 0.13.9
RUN := $(UV) run --frozen --no-sync
CUSTOMERS ?= 50000
DEMO_START := $(shell date -u +%Y-%m-%dT%H:%M:%SZ)

.PHONY: demo test install redis clean help
help:
	@echo "make demo   install, generate $(CUSTOMERS) customers, apply, train, batch-score, serve, skew report"
	@echo "make test   install and run the tests"

## install: uv (if missing) and the locked environment in .venv
install: .venv/.installed
.venv/.installed: pyproject.toml uv.lock
	@test -x "$(UV)" || { echo "installing uv $(UV_VERSION) into .tools/"; $(PYTHON) -m venv .tools && .tools/bin/pip install --quiet uv==$(UV_VERSION); }
	@time $(UV) sync --frozen
	@touch $@

## redis: a redis-server binary for tests and the demo (REDIS_URL, if it answers, is used as is)
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's redis-server"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null; \
	  else \
	    echo "redis-server not found: install it (Debian/Ubuntu: sudo apt-get install redis-server, macOS: brew install redis)" >&2; exit 1; \
	  fi; }

demo: install redis
	$(RUN) skewless generate --customers $(CUSTOMERS)
	$(RUN) skewless apply
	$(RUN) skewless train
	$(RUN) skewless score --as-of now
	$(RUN) skewless demo-online
	@# the report's exit code is for schedulers; in the demo a few requests make any drift alarm noise
	-$(RUN) skewless skew-report --since $(DEMO_START)

test: install redis
	$(RUN) pytest -q

clean:
	rm -rf .venv .tools feature_repo/data .pytest_cache
