# The two entry points: `make lab` (the main job) and `make test` (the whole suite).
# Both create .venv on first use; nothing outside the repository is changed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.llm_magic-setup
# The CPU build of PyTorch that the test setup is pinned to.
TORCH ?= torch==2.13.0
# The browser tests drive Debian's Chromium; it is installed with apt-get when missing.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# JupyterLab refuses to start as root without --allow-root; containers and CI usually are root.
ALLOW_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
# make lab PORT=9999 picks the port (so does JupyterLab's own JUPYTER_PORT); default 8888.
PORT ?=
# make notebooks NOTEBOOK=notebooks/05_attention.ipynb runs only that one; default: all.
NOTEBOOK ?=

.PHONY: setup browser lab test lint bench demo-model notebooks screenshots clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

browser:
	@test -x $(CHROMIUM) || command -v apt-get >/dev/null || { echo "The browser tests need \
	Chromium: install it, then run make test CHROMIUM=/path/to/chromium"; exit 1; }
	test -x $(CHROMIUM) || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq chromium >/dev/null; }

lab: setup
	@$(PY) -m compileall -q llm_magic  # bytecode, as an installed wheel has: faster kernel starts
	@echo "Starting JupyterLab on notebooks/01_quickstart.ipynb: open the http://127.0.0.1:... URL"
	@echo "printed below (with its token) in a browser. Ctrl+C stops it."
	HF_HUB_OFFLINE=1 $(PY) -m jupyter lab $(ALLOW_ROOT) $(if $(PORT),--port=$(PORT)) \
		notebooks/01_quickstart.ipynb

# Lint first: a finding fails the target before the long suite starts. The suite then runs on
# TEST_WORKERS processes (pytest-xdist, a test file each, the longest files first); the tests
# that measure a latency (marked serial) run alone after it, so no other worker slows them.
TEST_WORKERS ?= 2
PYTEST := LLM_MAGIC_CHROMIUM=$(CHROMIUM) $(PY) -m pytest -p no:cacheprovider

test: setup browser lint
	$(PYTEST) -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not serial" tests notebooks --nbval-lax
	$(PYTEST) -m serial tests

lint: setup
	$(PY) -m ruff check llm_magic tests benchmarks tools
	$(PY) -m mypy llm_magic

bench: setup
	$(PY) benchmarks/generate.py

demo-model: setup
	$(PY) -m llm_magic.demo.train

# Run every notebook in a clean kernel on the demo model, offline, and store it with its outputs.
notebooks: setup
	$(PY) tools/run_notebooks.py $(NOTEBOOK)

# Take the README's pictures of each view in a real JupyterLab: docs/images/*.png.
screenshots: setup browser
	LLM_MAGIC_CHROMIUM=$(CHROMIUM) $(PY) tools/screenshots.py

clean:
	rm -rf $(VENV) build dist *.egg-info
