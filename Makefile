# One command sets everything up and runs the main job (`make demo`); one runs the tests (`make test`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.netmorph-installed

.PHONY: setup demo test lint bench bench-quick clean

setup: $(STAMP)

# torch==2.13.0 first: that pin takes the CPU build; a bare `torch` would pull the CUDA stack.
$(STAMP): pyproject.toml setup.py CMakeLists.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e ".[torch,test,experiments]"
	touch $(STAMP)

demo: setup
	$(BIN)/netmorph demo

test: setup
	$(BIN)/python -m ruff check netmorph_core tests bench
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/run.py

bench-quick: setup
	$(BIN)/python bench/run.py --quick

clean:
	rm -rf $(VENV) build *.egg-info netmorph_core/_native*.so
