# camloc: two commands, each installing what it needs into .venv.
#   make demo   the core package only (pinned torch, then camloc without extras), then
#               explain the bundled photos into demo-out/
#   make test   the extras and the test tools (and Chromium if missing), then the test suite
# Also: make docs (the site, offline, strict), make lint, make bench, make clean.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q
# The torch pair CI and the demo use (the package itself declares ranges). Passed to every
# install so that no later install moves them.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test docs setup lint bench clean serve

# The core: a venv, a pip that knows dependency groups (>= 25.1), pinned torch, camloc.
$(VENV)/.core: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (camloc needs Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade "pip>=25.1"
	$(PIP) $(TORCH)
	$(PIP) -e . $(TORCH)
	touch $@

# Tests: every extra, the test group (which includes the docs group), system packages.
$(VENV)/.test: $(VENV)/.core pyproject.toml scripts/setup-system.sh
	$(PIP) -e ".[all]" --group test $(TORCH)
	bash scripts/setup-system.sh
	touch $@

$(VENV)/.docs: $(VENV)/.core pyproject.toml
	$(PIP) -e . --group docs $(TORCH)
	touch $@

$(VENV)/.bench: $(VENV)/.core pyproject.toml
	$(PIP) -e ".[all]" --group bench $(TORCH)
	touch $@

setup: $(VENV)/.test

demo: $(VENV)/.core
	$(VENV)/bin/camloc run examples/images --out demo-out --topk 3 --panels --grid --save-maps
	@echo "open demo-out/ : overlays (*_overlay.png), panels, grids, results.jsonl"

test: $(VENV)/.test
	$(PY) -m pytest -q

docs: $(VENV)/.docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

lint: $(VENV)/.test
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(VENV)/.bench
	$(PY) benchmarks/bench_cam.py

# camloc serve: the web page and JSON API on http://127.0.0.1:8000/ (docs/serve.md)
serve: $(VENV)/.core
	$(PIP) -e ".[serve]" $(TORCH)
	$(VENV)/bin/camloc serve

clean:
	rm -rf $(VENV) demo-out site build dist .pytest_cache
