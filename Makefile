# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs the package (with test extras) when missing.
# The Python versions each runtime installs on (wheels published): TensorFlow 2.15 for 3.9-3.11, TensorFlow 2.21 for
# 3.12-3.13 here. The interpreter checks below and tests/test_cloudbuild.py (which images a build step may use) read
# these two lists.
TF215_PYTHONS := 3.11 3.10 3.9
KERAS_PYTHONS := 3.12 3.13
PYTHON ?= $(shell for v in $(TF215_PYTHONS); do command -v python$$v && break; done || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The Keras engine's second runtime: TensorFlow 2.21 + tf-keras 2.21, found on PATH or under pyenv
# (~/.pyenv/versions/3.12.*), where it may be the only copy.
KERAS_PYTHON ?= $(shell for v in $(KERAS_PYTHONS); do for p in python$$v $$HOME/.pyenv/versions/$$v.*/bin/python$$v; do \
	$$p -c 'import sys' >/dev/null 2>&1 && { echo $$p; exit 0; }; done; done)
KERAS_VENV := .venv-keras
KPY := $(KERAS_VENV)/bin/python
KERAS_STAMP := $(KERAS_VENV)/.installed
# The version check of an interpreter: exits 1 unless its major.minor is in the list given.
VERSION_IN = -c 'import sys; sys.exit("%d.%d" % sys.version_info[:2] not in sys.argv[1].split())'
# What the legs collect (narrow it for one file: make test-tf221 TESTS=tests/test_console_quiet.py).
TESTS ?= tests
# pytest-xdist workers for `make test` and `make test-fast` (the 2 cores CI has; JOBS=0 runs in this process). The
# slow suites run in one process: their kill matrices time signals against training.
JOBS ?= 2
# The TF 2.15 venv's interpreter, when there is one: the TF 2.21 leg's cross-runtime tests use it (and skip without).
TF215_FOR_KERAS_LEG = TRAINER_TF215_PYTHON=$$(test -x $(PY) && echo $(CURDIR)/$(PY))

.PHONY: demo test test-tf215 test-tf221 test-slow test-fast test-unit test-keras install install-keras check-python \
	check-keras-python clean

# The interpreter checks alone (no install): what a build image must provide for each runtime.
check-python:
	@$(PYTHON) $(VERSION_IN) "$(TF215_PYTHONS)" 2>/dev/null || { \
	  echo "error: TensorFlow 2.15 needs Python $(TF215_PYTHONS), but $(PYTHON) is $$($(PYTHON) --version 2>&1); install Python 3.11 or 3.10 (e.g. 'uv python install 3.11' or your OS packages) and run: make PYTHON=/path/to/python3.11" >&2; exit 1; }

check-keras-python:
	@test -n "$(KERAS_PYTHON)" && $(KERAS_PYTHON) $(VERSION_IN) "$(KERAS_PYTHONS)" || { echo "error: the Keras engine's tests need Python $(KERAS_PYTHONS) (TensorFlow 2.21), $(if $(KERAS_PYTHON),not $(KERAS_PYTHON),none found on PATH or under ~/.pyenv/versions); install one (e.g. 'pyenv install 3.12' or 'uv python install 3.12') or run: make KERAS_PYTHON=/path/to/python3.12" >&2; exit 1; }

$(STAMP): setup.py
	@test -x $(PY) || $(MAKE) --no-print-directory check-python
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[cpu,test]"
	touch $(STAMP)

$(KERAS_STAMP): setup.py
	@test -x $(KPY) || $(MAKE) --no-print-directory check-keras-python
	test -x $(KPY) || $(KERAS_PYTHON) -m venv $(KERAS_VENV)
	$(KPY) -m pip install --quiet --upgrade pip
	$(KPY) -m pip install --quiet -e ".[keras-cpu,serve,pipeline,test]"
	touch $(KERAS_STAMP)

install: $(STAMP)

install-keras: $(KERAS_STAMP)

demo: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash scripts/demo.sh

# Both runtimes: the whole suite on TensorFlow 2.15 (both engines), then the Keras engine on TensorFlow 2.21.
test: test-tf215 test-tf221

# One runtime each (a Cloud Build step runs the leg its image can run: cloudbuild.yaml).
test-tf215: $(STAMP)
	$(PY) -m pytest -q -n $(JOBS) --durations=15 -m "not slow" $(TESTS)

# On TensorFlow 2.21 (no tf.estimator) tests/conftest.py collects the unit layer and the modules marked `tf221`.
test-tf221: $(KERAS_STAMP)
	$(TF215_FOR_KERAS_LEG) $(KPY) -m pytest -q -n $(JOBS) --durations=15 -m "not slow" $(TESTS)

# The slow suites (path-form matrices, the README's commands), both runtimes; CI runs them after `make test`.
test-slow: $(STAMP) $(KERAS_STAMP)
	$(PY) -m pytest -q -m slow tests
	$(TF215_FOR_KERAS_LEG) $(KPY) -m pytest -q -m slow tests

test-keras: $(STAMP) $(KERAS_STAMP)
	$(PY) -m pytest -q -m tf221 tests
	$(TF215_FOR_KERAS_LEG) $(KPY) -m pytest -q -m tf221 tests

# Under 3 minutes, for iterating: the unit layer (tests/unit: pure functions, both runtimes), then the integration
# modules marked `quick` (flags, data, models, the champion store, recipe checks; no multi-process runs).
test-fast: $(STAMP) $(KERAS_STAMP)
	$(PY) -m pytest -q -n $(JOBS) -m "unit or quick" tests
	$(KPY) -m pytest -q -m unit tests

# The unit layer alone: seconds.
test-unit: $(STAMP)
	$(PY) -m pytest -q -m unit tests

clean:
	rm -rf $(VENV) $(KERAS_VENV) runs build dist *.egg-info
