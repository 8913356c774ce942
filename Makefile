# Quick start: `make demo` (train/evaluate/infer the Synapse bundle on generated phantoms; `make demo-2d`: a 2D
# bundle), `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv demo demo-2d demo-3d test test-slow benchmark summary clean corpus

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

# the 2D demo: the CVC-ClinicDB polyp bundle on generated images (DEMO_TASK=colondb / isic2017: the other 2D bundles)
DEMO_TASK ?= clinicdb
demo-2d: $(STAMP)
	$(PY) -m xattnres_monai.demo --task $(DEMO_TASK)

# the 3D Synapse bundle (DynUNet + XAttnRes plug-in) on the CT phantoms
demo-3d: $(STAMP)
	$(PY) -m xattnres_monai.demo --task synapse_3d

# UTF-8 mode: in the full suite the preferred encoding had become ASCII by the time a torch.compile test ran (a C
# locale set by something earlier), and Inductor, which opens its UTF-8 kernel templates without an encoding, failed
# (torch 2.13); in UTF-8 mode open() defaults to UTF-8 whatever the locale
TEST_ENV = PYTHONUTF8=1

test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS)

# The slow suite runs in SLOW_WORKERS pytest processes (pytest-xdist; a test file stays in one process, so its module
# fixtures are built once) of one torch thread each: most of its time is single-threaded (the start-up and imports of
# the many bundle commands it runs as subprocesses, file I/O), which one process at a time leaves a core idle for.
# SLOW_WORKERS=0: one process, torch on every core. pytest exits 5 when nothing is marked slow: not a failure; the 25
# slowest tests are listed (CI time).
SLOW_WORKERS ?= 2
SLOW_THREADS = $(if $(filter 0,$(SLOW_WORKERS)),,OMP_NUM_THREADS=1)
test-slow: $(STAMP)
	$(TEST_ENV) $(SLOW_THREADS) $(PY) -m pytest -m slow -q -n $(SLOW_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS) || [ $$? -eq 5 ]

# real-file test corpus (tests/corpus.py), into $XATTNRES_CORPUS or ~/.cache/xattnres_monai/corpus
corpus: $(STAMP)
	$(PY) -m tests.corpus fetch

benchmark: $(STAMP)
	$(PY) benchmarks/xattnres_overhead.py

summary: $(STAMP)
	$(PY) -m xattnres_monai.networks.summary --flops 224

clean:
	rm -rf $(VENV) demo_output .pytest_cache

# MONAI Label server (annotation assist) in its own environment: `make label-server LABEL_STUDIES=/path/to/studies`
# (README "MONAI Label"). The environment is rebuilt when the hash of requirements-label.txt changes.
LABEL_VENV ?= .venv-label
LABEL_PY := $(LABEL_VENV)/bin/python
LABEL_STUDIES ?= label_studies
LABEL_APP ?= label_app
LABEL_PORT ?= 8000
LABEL_ARGS ?=
LABEL_HASH = $(shell $(PYTHON) -c "import hashlib; print(hashlib.sha256(open('requirements-label.txt', 'rb').read()).hexdigest())")

.PHONY: label-env label-server

label-env:
	@if [ "$$(cat $(LABEL_VENV)/.installed 2>/dev/null)" = "$(LABEL_HASH)" ]; then \
		echo "$(LABEL_VENV) is up to date"; \
	else \
		set -e; \
		$(PYTHON) -m venv --clear $(LABEL_VENV); \
		$(LABEL_PY) -m pip install --quiet --no-deps -r requirements-label.txt; \
		$(LABEL_PY) -m pip install --quiet --no-deps --no-build-isolation -e .; \
		$(LABEL_PY) -m xattnres_monai.tools.label_server check-env; \
		echo "$(LABEL_HASH)" > $(LABEL_VENV)/.installed; \
	fi

label-server: label-env
	$(LABEL_PY) -m xattnres_monai.tools.label_server start --studies $(LABEL_STUDIES) --app $(LABEL_APP) \
		--port $(LABEL_PORT) $(LABEL_ARGS)
