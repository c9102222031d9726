# Everything bootstraps from a fresh clone: `make test` and `make demo` create .venv at the
# repository root, install recal into it and fetch the Kafka jars once (cached per version).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install kafka-jars lint typecheck unit integration test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "recal needs Python >= 3.10; set PYTHON=/path/to/python3.10+")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

kafka-jars: $(STAMP)
	$(BIN)/recal kafka fetch

lint: $(STAMP)
	$(BIN)/ruff check worker tests bench

typecheck: $(STAMP)
	$(BIN)/mypy worker

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

integration: kafka-jars
	$(BIN)/pytest tests/integration -q -m integration

# The house checks run with the tests: ruff, mypy, and the doctests of every module in worker/.
test: $(STAMP) kafka-jars lint typecheck
	$(BIN)/pytest tests worker --doctest-modules -q

demo: kafka-jars
	$(BIN)/recal demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
