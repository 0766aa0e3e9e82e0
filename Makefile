# One command sets everything up and runs the main job (`make demo`); one runs the tests (`make test`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.netmorph-installed

.PHONY: setup demo test docs test-portability lint bench bench-quick clean

setup: $(STAMP)

# torch==2.13.0 first: that pin takes the CPU build; a bare `torch` would pull the CUDA stack.
# The C++/CUDA sources are prerequisites too: an existing .venv rebuilds the extension when they change.
$(STAMP): pyproject.toml setup.py CMakeLists.txt $(wildcard csrc/* bindings/*)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e ".[torch,test,experiments,docs]"
	touch $(STAMP)

demo: setup
	$(BIN)/netmorph demo

test: setup
	$(BIN)/python -m ruff check netmorph_core tests bench
	$(MKDOCS_BUILD)
	$(BIN)/python -m pytest

# The documentation site (docs/, mkdocs.yml) into site/; --strict: any warning (a broken link or
# cross-reference, a docstring the API reference cannot parse) fails the build.
MKDOCS_BUILD = NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site
docs: setup
	$(MKDOCS_BUILD)

# The suite under other CPUs' OpenBLAS kernels and with 1 and 2 threads (docs/development.md,
# notes). SkylakeX's kernels need AVX-512, so they run only where the CPU has it.
CORETYPES ?= Haswell Zen Sandybridge Nehalem Prescott \
	$(if $(shell grep -m1 -ow avx512f /proc/cpuinfo 2>/dev/null),SkylakeX)
test-portability: setup
	set -e; for c in $(CORETYPES); do echo "== OPENBLAS_CORETYPE=$$c"; \
		OPENBLAS_CORETYPE=$$c $(BIN)/python -m pytest -q -p no:cacheprovider; done
	set -e; for t in 1 2; do echo "== $$t thread(s)"; \
		OMP_NUM_THREADS=$$t OPENBLAS_NUM_THREADS=$$t NUMBA_NUM_THREADS=$$t \
		$(BIN)/python -m pytest -q -p no:cacheprovider; done

bench: setup
	$(BIN)/python bench/run.py

bench-quick: setup
	$(BIN)/python bench/run.py --quick

clean:
	rm -rf $(VENV) build site *.egg-info netmorph_core/_native*.so
