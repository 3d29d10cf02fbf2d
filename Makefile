# authd's habits. Every target works on a fresh machine: `make venv` installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: venv test pytest lint typecheck bench demo clean

$(BIN)/authd: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

venv: $(BIN)/authd

## make test: everything CI checks: the test suite, ruff and mypy --strict.
test: venv pytest lint typecheck

pytest: venv
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check authd tests bench demo
	$(BIN)/ruff format --check authd tests bench demo

typecheck: venv
	$(BIN)/mypy

## make bench: benchmarks; figures are printed and written to docs/BENCHMARKS.md.
bench: venv
	$(BIN)/python -m bench

## make demo: the main job end to end on embedded defaults, no AWS account needed.
demo: venv
	$(BIN)/python -m demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
