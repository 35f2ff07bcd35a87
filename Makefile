# camloc: two commands.
#   make demo   set up .venv, then explain the bundled photos into demo-out/
#   make test   set up .venv with test extras, then run the test suite
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS ?= test

.PHONY: demo test setup lint bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (camloc needs Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	bash scripts/setup-system.sh
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/camloc run examples/images --out demo-out --topk 3 --panels --grid --save-maps
	@echo "open demo-out/ : overlays (*_overlay.png), panels, grids, results.jsonl"

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_cam.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache

# camloc serve: the web page and JSON API on http://127.0.0.1:8000/ (docs/serve.md)
.PHONY: serve
serve: $(STAMP)
	$(VENV)/bin/camloc serve
