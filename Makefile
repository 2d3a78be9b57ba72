# Two set-up commands: `make demo` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
# make demo FAMILIES=tiny runs one family; empty: every embedded family
FAMILIES ?=
KERNEL := linker-nb

.PHONY: env demo test test-all test-browser lab tiny-family bench clean-runs

# torch==2.13.0 first: it resolves to the local CPU wheel; an unpinned torch would pull CUDA builds.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "linker-nb" >/dev/null
	touch $(STAMP)

env: $(STAMP)

# Every notebook on every embedded family (linker_nb.analyses.panel.embedded_families()): executed notebooks and
# results JSON land in runs/<family>/, then an HTML report: runs/<family>/<notebook>.html and runs/index.html.
demo: $(STAMP)
	@families="$(FAMILIES)"; [ -n "$$families" ] || families=$$($(PY) -c \
	  "from linker_nb.analyses.panel import embedded_families; print(' '.join(embedded_families()))"); \
	for fam in $$families; do \
	  mkdir -p runs/$$fam; \
	  for nb in $(NOTEBOOKS); do \
	    name=$$(basename $$nb .ipynb); \
	    echo "== $$fam / $$name"; \
	    $(VENV)/bin/papermill $$nb runs/$$fam/$$name.ipynb -k $(KERNEL) --execution-timeout 600 --no-progress-bar \
	      -p model $$fam -p results_json runs/$$fam/$$name.json || exit 1; \
	  done; \
	done
	@$(PY) -m linker_nb.nb.report runs

# JupyterLab on notebooks/ with the linker-nb kernel (installed in .venv by `make env`); prints its URL.
LAB_PORT ?= 8888
lab: $(STAMP)
	@echo "JupyterLab on notebooks/ with the $(KERNEL) kernel: open the http://127.0.0.1:$(LAB_PORT)/lab?token=... URL it prints"
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --ServerApp.root_dir=notebooks --no-browser --port=$(LAB_PORT) \
	  --MultiKernelManager.default_kernel_name=$(KERNEL) $$([ "$$(id -u)" = 0 ] && echo --allow-root)

# Two pytest workers, one test file each (module fixtures such as 07's Dask cluster stay in one process): the
# notebook tier is mostly single-threaded kernel start-up, so this halves the wall time on 2 cores
# (478 tests: 9 min 45 s serial, 5 min 32 s with -n 2, measured 2026-12-01 on the 2-core machine).
PYTEST_WORKERS ?= -n 2 --dist loadfile
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_WORKERS)

# The browser tier: a real JupyterLab driven by playwright in Debian's chromium (apt-get install chromium).
test-browser: $(STAMP)
	$(PY) -m pytest -q -m browser tests/browser

# Slow tier too (real checkpoints: needs Hub access or local copies).
test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

# Re-train the embedded tiny families (deterministic; ~minutes on 2 cores). Weights are committed.
# The MoE / fused / post-norm layouts: 0.4x tiny's steps on 1 thread (~35 min each at load 10, in parallel).
TINY_LAYOUTS := moe phi3 olmo2
tiny-family: $(STAMP)
	$(PY) scripts/train_tiny_family.py --out linker_nb/tiny_family
	@for l in $(TINY_LAYOUTS); do \
	  $(PY) scripts/train_tiny_family.py --layout $$l --out linker_nb/tiny_$$l --steps-scale 0.4 --threads 1 || exit 1; \
	  $(PY) scripts/train_tiny_family.py --layout $$l --out linker_nb/tiny_$$l --readme-only; \
	done
	$(PY) scripts/train_tiny_family.py --out linker_nb/tiny_family --readme-only

bench: $(STAMP)
	$(PY) benchmarks/run.py
	$(PY) benchmarks/panel.py

clean-runs:
	rm -rf runs
