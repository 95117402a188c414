# The README's two commands are `make demo` and `make test`; both set everything up first.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup setup-test demo demo-quick demo-attributes demo-volumes test test-fast test-slow lint format example example-attributes clean

setup:
	@bash scripts/setup.sh

demo: setup  ## the main job: the full demo on the embedded phantom data
	$(BIN)/medfair demo --out reports/demo

demo-quick: setup  ## the same protocol at smaller sizes, about 10 minutes (reports/demo-quick)
	$(BIN)/medfair demo --quick --out reports/demo-quick

demo-attributes: setup  ## the two-attribute pipeline (sex × age band) in reports/demo/attributes
	$(BIN)/medfair demo --out reports/demo --attributes sex,age_band

demo-volumes: setup  ## the 3-D path (volumes, 3-D classifier, MONAI LDM) in reports/demo/volumes
	$(BIN)/medfair demo --volumes --out reports/demo

setup-test:
	@MEDFAIR_FRD=1 bash scripts/setup.sh

test: setup-test  ## lint, format check, the fast test tier, then the slow reliability guarantees
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest
	$(BIN)/pytest -m slow tests/reliability

test-fast: setup-test  ## the fast tier alone (what to run while editing)
	$(BIN)/pytest

test-slow: setup-test  ## the slow tier (model quality bars, full pipelines)
	$(BIN)/pytest -m slow

lint: setup
	$(BIN)/ruff check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

example: setup  ## refresh reports/example/ from a finished demo
	BIN=$(BIN) bash scripts/make_example.sh reports/demo reports/example

example-attributes: setup  ## refresh reports/example/attributes/ from a two-attribute demo
	BIN=$(BIN) bash scripts/make_example_attributes.sh reports/demo/attributes reports/example/attributes

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache reports/demo
