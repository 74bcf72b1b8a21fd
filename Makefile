# The two commands of the README: `make quickstart` (main job) and `make test` (.ci/run calls it).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup quickstart test test-all lint format clean publish

$(BIN)/statprune: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

setup: $(BIN)/statprune

quickstart: setup
	$(BIN)/statprune assets fetch
	$(BIN)/statprune quickstart --spec experiments/quickstart.toml

test: setup
	$(BIN)/python -m pytest -m "not slow" -q

test-all: setup
	$(BIN)/python -m pytest -q

# a finished study's records → results/published/ (tracked), then every figure redrawn:
#   make publish SPEC=experiments/minilm_movie.toml
publish: setup
	test -n "$(SPEC)" || { echo "usage: make publish SPEC=experiments/<study>.toml"; exit 2; }
	$(BIN)/statprune publish $(SPEC)
	$(BIN)/statprune figures --allow-missing
	@echo "then: git add results/published paper_figures/ci docs/figures && git commit"

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
