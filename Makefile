# Two commands work on a fresh machine: `make demo` and `make test`.
# Both create .venv and install what they need first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(CURDIR)/node_modules/.bin:$(PATH)

.PHONY: demo test setup protos lint typecheck buf-lint buf-breaking check clean

setup: $(STAMP) node_modules/.bin/buf

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

node_modules/.bin/buf: package.json
	npm install --no-audit --no-fund --silent
	touch $@

demo: setup
	$(BIN)/hin demo

test: setup lint buf-lint buf-breaking
	$(BIN)/pytest -q -p no:cacheprovider

protos: $(STAMP)
	$(BIN)/python tools/gen_protos.py

lint: $(STAMP)
	$(BIN)/ruff check mesh svc_* tools tests bench
	$(MAKE) --no-print-directory typecheck

typecheck: $(STAMP)
	$(BIN)/mypy mesh svc_*

buf-lint: node_modules/.bin/buf
	buf lint

# Compare protos with the previous commit of main, when there is one.
buf-breaking: node_modules/.bin/buf
	@if git rev-parse --verify --quiet HEAD~1 >/dev/null; then \
		buf breaking --against '.git#ref=HEAD~1'; \
	else echo "buf breaking: no previous commit to compare with"; fi

clean:
	rm -rf $(VENV) node_modules .hin
