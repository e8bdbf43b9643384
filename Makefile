# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Two workers: the suite is dominated by XLA compilations, which run one per process.
PYTEST_ARGS ?= -n 2

.PHONY: demo test lint format docs notebooks dist bench bench-targets bench-hugepages bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The package compiles its fused Hessian kernel on install: a change to it reinstalls too.
BUILD := pyproject.toml setup.py csrc/hessian_contract.cc

$(VENV)/.installed-core: $(BUILD) | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

# The CLI's extras (scipy for .mat files, matplotlib for plots, tqdm for progress): the demo
# installs them so that the README's CLI example runs straight after it.
$(VENV)/.installed-cli: $(BUILD) | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[cli]'
	touch $@ $(VENV)/.installed-core

$(VENV)/.installed-test: $(BUILD) | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed-cli $(VENV)/.installed-core

# The optional peers: torch==2.13.0 (a CPU build on this machine's local disk) and folx.
$(VENV)/.installed-bench: $(BUILD) | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $@ $(VENV)/.installed-test $(VENV)/.installed-cli $(VENV)/.installed-core

demo: $(VENV)/.installed-cli
	$(BIN)/jaxjac demo

LINTED := jaxjac tests benchmarks notebooks

test: $(VENV)/.installed-test
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) docs

lint: $(VENV)/.installed-test
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

format: $(VENV)/.installed-test
	$(BIN)/ruff format $(LINTED)
	$(BIN)/ruff check --fix $(LINTED)

# The documentation site (mkdocs-material, mkdocstrings, mkdocs-jupyter) into site/; --strict: a
# broken cross-reference, a missing page or any warning fails the build.
docs: $(VENV)/.installed-test
	$(BIN)/mkdocs build --strict --site-dir site

# The notebooks' single sources are notebooks/NN_name.py (jupytext percent format); this writes
# the executed notebooks/NN_name.ipynb beside each (tests/test_notebooks.py fails on a stale one).
# jupytext converts; nbconvert runs each in a fresh python3 kernel in notebooks/, in place, with
# no per-cell timestamps (so a rebuild's diff is the outputs alone).
notebooks: $(VENV)/.installed-test
	$(BIN)/jupytext --to ipynb notebooks/[0-9]*.py
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.record_timing=False notebooks/[0-9]*.ipynb

# An sdist and a wheel into dist/ (the wheel carries the fused kernel for every ISA level).
dist: $(VENV)/.installed-test
	rm -rf dist
	$(BIN)/python -m build --outdir dist

# The full grid behind benchmarks/RESULTS.md (about 60-85 minutes on 2 cores); peak-RSS probes
# of every route are `python -m benchmarks.run --memory all` (several hours).
bench: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks.run --memory target --route-budget-s 8

# The issue-5 target rows alone (both nets, float32, B = 256, Jacobian and Hessian; about 6
# minutes), with more calls a route than the full grid: into benchmarks/targets/.
TARGET_RUN := -m benchmarks.run --net small wide --batch 256 --dtype float32 \
	--route-budget-s 20 --memory none
bench-targets: $(VENV)/.installed-bench
	$(BIN)/python $(TARGET_RUN) --task jacobian hessian --out benchmarks/targets

# The target rows and the write-bound tasks with glibc asking for transparent huge pages (which
# a kernel in THP mode `madvise` grants on request): the naive routes page-fault less and get
# faster, jaxjac's cache-blocked ones do not (about 8 minutes): into benchmarks/hugepages/.
bench-hugepages: $(VENV)/.installed-bench
	GLIBC_TUNABLES=glibc.malloc.hugetlb=1 $(BIN)/python $(TARGET_RUN) \
		--task jacobian hessian weight_jacobian per_example_grads --out benchmarks/hugepages

# The small net, float32, B = 256 (under 3 minutes): into benchmarks/quick/, so the committed
# full-grid results stay as they are.
bench-quick: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks.run --quick --out benchmarks/quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
