# ftlaunch developer commands. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch is pinned first: a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
DEMO_CONFIG ?= configs/examples/demo-minilm.yaml
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-unit lint format docs bench clean

$(BIN)/ftlaunch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/ftlaunch

demo: setup
	$(BIN)/ftlaunch demo-data --out data/demo
	$(BIN)/ftlaunch run $(DEMO_CONFIG)

test: setup
	$(BIN)/python -m pytest tests -m "not gpu" -v --durations=80

test-unit: setup
	$(BIN)/python -m pytest tests/unit -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/pyright

docs: setup  # the config reference is generated from the schema (a test checks it is fresh)
	$(BIN)/python -m launcher.config_docs > docs/config.md

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/pip install --quiet datasets  # the data benchmark's comparison baseline only
	$(BIN)/python benchmarks/data.py --gb 1.0
	$(BIN)/python benchmarks/checkpoint.py
	$(BIN)/python benchmarks/peft.py

clean:
	rm -rf $(VENV) runs data .pytest_cache
