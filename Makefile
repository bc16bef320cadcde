# Two commands do all set-up on a fresh machine (see README.md):
#   make lesson   open the lesson in JupyterLab
#   make test     run the unit tests and every notebook (nbval)
# Both create .venv and install the package with its dependencies on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8888

.PHONY: lesson test test-gpu lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

lesson: $(BIN)/.installed
	$(BIN)/jupyter lab --notebook-dir=notebooks --port=$(PORT)

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# On a CUDA machine (e.g. the device tool's, with wheels from .ci/fetch-gpu-wheels): the GPU
# tests, the notebooks on the GPU, the benchmark's GPU rows and the rest of the suite, in 10 minutes.
test-gpu:
	.ci/gpu-check

lint: $(BIN)/.installed
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
