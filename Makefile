# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Everything runs inside .venv, installed by uv from uv.lock (every version pinned); the few
# system programs the project needs (redis-server, curl, chromium for the report's browser test)
# are installed from Debian's packages when missing and running as root, or named with the
# command that installs them.

SHELL := /bin/bash
PYTHON ?= python3
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON ?= $(PYTHON)
UV := $(or $(shell command -v uv 2>/dev/null),.tools/bin/uv)
UV_VERSION := 0.13.9
RUN := $(UV) run --frozen --no-sync
CUSTOMERS ?= 50000
DEMO_START := $(shell date -u +%Y-%m-%dT%H:%M:%SZ)

.PHONY: demo test scheduler install redis curl chromium netns clean help
help:
	@echo "make demo   install, generate $(CUSTOMERS) customers, apply, train, batch-score, serve, skew report"
	@echo "make test   install and run the tests"
	@echo "make scheduler  the scheduled pipeline on Dagster: http://127.0.0.1:3000 (REDIS_URL: the Redis it loads)"
	@echo "make clean  remove the environment, generated data, models and outputs"

## install: uv (if missing) and the locked environment in .venv
install: .venv/.installed
.venv/.installed: pyproject.toml uv.lock
	@test -x "$(UV)" || { echo "installing uv $(UV_VERSION) into .tools/"; $(PYTHON) -m venv .tools && .tools/bin/pip install --quiet uv==$(UV_VERSION); }
	@time $(UV) sync --frozen
	@touch $@

# $(call debian,<command>,<package>): the command, or Debian's package when root with apt-get, or one line saying how
define debian
	@command -v $(1) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's $(2)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2)) >/dev/null 2>&1 \
	      || { echo "apt-get install $(2) failed: install it by hand" >&2; exit 1; }; \
	  else \
	    echo "$(1) not found: install it (Debian/Ubuntu: sudo apt-get install $(2), macOS: brew install $(2))" >&2; exit 1; \
	  fi; }
endef

redis:
	$(call debian,redis-server,redis-server)
curl:
	$(call debian,curl,curl)
chromium:
	$(call debian,chromium,chromium)
# the Ray tests run Ray in a network namespace with only loopback: unshare/nsenter, ip, pgrep
netns:
	$(call debian,unshare,util-linux)
	$(call debian,ip,iproute2)
	$(call debian,pgrep,procps)

demo: install redis curl
	$(RUN) skewless generate --customers $(CUSTOMERS) --end $(DEMO_START)
	$(RUN) skewless apply
	$(RUN) skewless train --feature-service churn_v2
	$(RUN) skewless score --as-of now --explain-top 3 --explain-segment High
	$(RUN) skewless demo-online
	$(RUN) skewless skew-report --since $(DEMO_START)
	@$(RUN) skewless demo-summary --started $(DEMO_START)

test: install redis curl chromium netns
	$(RUN) pytest -q

## scheduler: `dagster dev` on the project's code location (orchestration/), DAGSTER_HOME under data/
scheduler: install redis
	$(RUN) skewless scheduler

clean:
	rm -rf .venv .tools .pytest_cache .hypothesis feature_repo/data data models
