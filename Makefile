# One entry point for a fresh machine with only Python 3.11+.
#   make test   lint + mypy --strict + the whole pytest suite (CI runs exactly this)
#   make demo   the demo app (Starlette + BrokerMiddleware + MockProvider on SQLite)
#   make bench  every benchmark in benchmarks/, ratios measured in the same run
#   make docs   the documentation site (mkdocs-material), warnings are errors
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test lint typecheck pytest demo bench docs ci-setup clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,all]'
	touch $(STAMP)

# Under CI=true the browser, Node.js and service-backed tests must run, not skip:
# install Chromium and the interop provider, and make sure PostgreSQL and Redis answer.
ci-setup:
ifeq ($(CI),true)
	bash scripts/ci-deps.sh
	bash scripts/services.sh
endif

# The demo needs only the [demo] extra (starlette, uvicorn), not the development toolchain.
DEMO_STAMP := $(VENV)/.demo-installed

$(DEMO_STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet -e '.[demo]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/oauth2-broker demo

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) scripts/unasync.py --check

typecheck: $(STAMP)
	$(PY) -m mypy

pytest: $(STAMP) ci-setup
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(STAMP)
	$(PY) benchmarks/run.py

docs: $(STAMP)
	$(PY) -m pip install --quiet -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .oauth2-broker
