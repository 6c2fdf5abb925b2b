# Reprise: `make demo` and `make test` work on a fresh Debian machine with Python 3.11;
# they install what they need (venv, pip deps, redis-server) themselves.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto' | sort)
GENERATED := $(PROTOS:protos/%.proto=%_pb2.py)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: help install protos redis cc model model-ready test test-unit test-integration test-slow demo up clean

help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(PY):
	@$(PYTHON_SYS) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3-venv missing: installing it"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv; \
	  rm -rf $(VENV); $(PYTHON_SYS) -m venv $(VENV); }

$(INSTALLED): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench]'
	@touch $@

install: $(INSTALLED) protos ## venv + pinned deps + generated code

# Generated code is not committed: it is rebuilt here from protos/ whenever a .proto changes.
$(GENERATED) &: $(PROTOS) $(INSTALLED)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)

protos: $(GENERATED) ## generate Python code from protos/

redis: ## install redis-server with apt when it is missing
	@command -v redis-server >/dev/null || { \
	  echo "redis-server missing: installing it"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server; }

cc: ## install gcc with apt when there is no C compiler (it builds the int4 kernel, inference_svc/runtime/native)
	@command -v $${CC:-cc} >/dev/null || { \
	  echo "no C compiler: installing gcc"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq gcc libc6-dev; }

model: install cc ## assemble, verify and convert the default model into .models/ (once)
	$(PY) -m inference_svc.prepare

# up and demo start from the converted copy when one is there: prepare would load the model (8-20 s) only to
# find it; a missing format is still converted, by prepare here or by the service's first start.
model-ready: install cc
	@$(PY) -m devtools.devstack model-ready || $(MAKE) --no-print-directory model

test: install redis cc ## run the test suite (unit + integration; no 491 MB model needed)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-unit: install cc ## unit tests only
	$(PY) -m pytest -q -m unit $(PYTEST_ARGS)

test-slow: install redis cc model ## tests that load the real default model
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

demo: install redis model-ready ## start everything, send a few requests (with repeats), stop
	$(PY) -m devtools.demo

up: install redis model-ready ## run the stack in the foreground, supervised (Ctrl-C stops it); TOKENS=tok=tenant turns auth on
	$(PY) -m devtools.devstack up $(if $(TOKENS),--tokens '$(TOKENS)')

clean: ## remove generated code and run state (keeps .venv and .models)
	rm -f $(GENERATED) $(GENERATED:_pb2.py=_pb2_grpc.py) $(GENERATED:_pb2.py=_pb2.pyi)
	rm -rf .run

-include mk/*.mk
