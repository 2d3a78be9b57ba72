# Two set-up commands: `make demo` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
MODEL ?= tiny
KERNEL := linker-nb

.PHONY: env demo test test-all tiny-family bench clean-runs

# torch==2.13.0 first: it resolves to the local CPU wheel; an unpinned torch would pull CUDA builds.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "linker-nb" >/dev/null
	touch $(STAMP)

env: $(STAMP)

# Every notebook on the embedded tiny family; executed notebooks and results JSON land in runs/.
demo: $(STAMP)
	@mkdir -p runs
	@for nb in $(NOTEBOOKS); do \
	  name=$$(basename $$nb .ipynb); \
	  echo "== $$name (model=$(MODEL))"; \
	  $(VENV)/bin/papermill $$nb runs/$$name.ipynb -k $(KERNEL) --execution-timeout 600 --no-progress-bar \
	    -p model $(MODEL) -p results_json runs/$$name.json || exit 1; \
	done
	@echo "executed notebooks and results JSON are in runs/"

test: $(STAMP)
	$(PY) -m pytest -q

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
