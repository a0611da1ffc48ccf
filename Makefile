# The two quick-start commands: `make train` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: train demo test lint install clean

# Create the virtual environment and install the toolkit (editable, with test tools).
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# The main job: RL fine-tuning of the built-in toy model on the CPU (the toy recipe, about 10 min).
train: $(VENV)/.installed
	$(BIN)/flowrl train

# Sample the built-in toy model and evaluate it on held-out ToyShapes prompts (about a minute).
demo: $(VENV)/.installed
	$(BIN)/flowrl sample --prompt "a red circle and a blue square" --out runs/demo/samples.png
	$(BIN)/flowrl eval toyshapes --json runs/demo/toyshapes.json --grid runs/demo/toyshapes_grid.png

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

# ruff's lint and format checks (settings in pyproject.toml); `ruff format .` applies the format.
lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs build *.egg-info
