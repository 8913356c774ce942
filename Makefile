# Quick start: `make demo` (train/evaluate/infer the Synapse bundle on generated phantoms), `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv demo test test-slow benchmark summary clean

venv: $(STAMP)

# torch first, from the pinned CPU wheel: an unpinned torch would pull several GB of CUDA packages.
$(STAMP): setup.cfg pyproject.toml requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m xattnres_monai.demo

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS)

# pytest exits 5 when nothing is marked slow: not a failure
test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q $(PYTEST_ARGS) || [ $$? -eq 5 ]

benchmark: $(STAMP)
	$(PY) benchmarks/xattnres_overhead.py

summary: $(STAMP)
	$(PY) -m xattnres_monai.networks.summary --flops 224

clean:
	rm -rf $(VENV) demo_output .pytest_cache
