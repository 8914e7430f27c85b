# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch is pinned: 2.13.0 is the CPU build that installs offline on the dev/CI machines;
# an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-matrix data venv docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[test]' $(TORCH_PIN)
	touch $@

venv: $(VENV)/.installed

# Fashion-MNIST from Debian (IDX files under $(FMNIST_DIR)); skipped when present or when apt is unavailable.
data:
	@if [ ! -d $(FMNIST_DIR) ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "apt-get not found: install Fashion-MNIST into $(FMNIST_DIR) or set BILEVEL_DATA"; fi; \
	fi

demo: venv data
	$(PY) -m bilevel.app.demo

# Two pytest-xdist workers of one torch thread each (tests/conftest.py); TEST_WORKERS=0 runs the suite in one
# process with torch's default threads.
TEST_WORKERS ?= 2
test: venv data
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# The suite under 1 and 2 threads and two ATen CPU kernels (vectorization changes the last bits of reductions):
# every configuration must pass. About 4x the time of `make test`.
test-matrix: venv data
	BILEVEL_TEST_THREADS=1 ATEN_CPU_CAPABILITY=avx2 $(PY) -m pytest -q -p no:cacheprovider
	BILEVEL_TEST_THREADS=2 ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -p no:cacheprovider
	BILEVEL_TEST_THREADS=1 ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -p no:cacheprovider
	BILEVEL_TEST_THREADS=2 ATEN_CPU_CAPABILITY=avx2 $(PY) -m pytest -q -p no:cacheprovider

# The API site (mkdocs-material + mkdocstrings, from docs/ and the docstrings) into site/; --strict: a broken link,
# reference or docstring fails the build. The test suite builds it too (tests/test_docs_site.py).
docs: venv
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d site

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info site
