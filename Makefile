# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs the package (with test extras) when missing.
# TensorFlow 2.15 has wheels for Python 3.9-3.11 only: prefer those interpreters.
PYTHON ?= $(shell command -v python3.11 || command -v python3.10 || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The Keras engine's second runtime: TensorFlow 2.21 + tf-keras 2.21 on Python 3.12 (or 3.13), found on PATH or
# under pyenv (~/.pyenv/versions/3.12.*), where it may be the only copy.
KERAS_PYTHON ?= $(shell for p in python3.12 python3.13 $$HOME/.pyenv/versions/3.12.*/bin/python3.12 \
	$$HOME/.pyenv/versions/3.13.*/bin/python3.13; do $$p -c 'import sys' >/dev/null 2>&1 && { echo $$p; break; }; done)
KERAS_VENV := .venv-keras
KPY := $(KERAS_VENV)/bin/python
KERAS_STAMP := $(KERAS_VENV)/.installed
# What the TensorFlow 2.21 leg runs: the Keras engine's tests (the rest needs tf.estimator).
KERAS_TESTS := tests/test_keras_engine.py tests/test_path_forms.py tests/test_state_healing.py tests/test_readme.py \
	tests/test_run_lock.py tests/test_disk_full.py tests/test_signal_stages.py tests/test_packaging.py \
	tests/test_evaluator_verdict.py tests/test_console_quiet.py tests/test_wrapper_signals.py

.PHONY: demo test test-slow test-fast test-keras install install-keras clean

$(STAMP): setup.py
	@test -x $(PY) || $(PYTHON) -c 'import sys; sys.exit(not (3, 9) <= sys.version_info[:2] <= (3, 11))' || { \
	  echo "error: TensorFlow 2.15 needs Python 3.9-3.11, but $(PYTHON) is $$($(PYTHON) --version 2>&1); install Python 3.11 or 3.10 (e.g. 'uv python install 3.11' or your OS packages) and run: make PYTHON=/path/to/python3.11" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[cpu,test]"
	touch $(STAMP)

$(KERAS_STAMP): setup.py
	@test -x $(KPY) || test -n "$(KERAS_PYTHON)" || { echo "error: the Keras engine's tests need Python 3.12 or 3.13 (TensorFlow 2.21), none found on PATH or under ~/.pyenv/versions; install one (e.g. 'pyenv install 3.12' or 'uv python install 3.12') or run: make KERAS_PYTHON=/path/to/python3.12" >&2; exit 1; }
	test -x $(KPY) || $(KERAS_PYTHON) -m venv $(KERAS_VENV)
	$(KPY) -m pip install --quiet --upgrade pip
	$(KPY) -m pip install --quiet -e ".[keras-cpu,test]"
	touch $(KERAS_STAMP)

install: $(STAMP)

install-keras: $(KERAS_STAMP)

demo: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash scripts/demo.sh

# Both runtimes: the whole suite on TensorFlow 2.15 (both engines), then the Keras engine on TensorFlow 2.21.
test: $(STAMP) $(KERAS_STAMP)
	$(PY) -m pytest -q --durations=15 -m "not slow" tests
	TRAINER_TF215_PYTHON=$(CURDIR)/$(PY) $(KPY) -m pytest -q --durations=15 -m "not slow" $(KERAS_TESTS)

# The slow suites (path-form matrices, the README's commands), both runtimes; CI runs them after `make test`.
test-slow: $(STAMP) $(KERAS_STAMP)
	$(PY) -m pytest -q -m slow tests
	TRAINER_TF215_PYTHON=$(CURDIR)/$(PY) $(KPY) -m pytest -q -m slow $(KERAS_TESTS)

test-keras: $(STAMP) $(KERAS_STAMP)
	$(PY) -m pytest -q $(KERAS_TESTS)
	TRAINER_TF215_PYTHON=$(CURDIR)/$(PY) $(KPY) -m pytest -q $(KERAS_TESTS)

# A few minutes, for iterating: flags, data, models, the champion store, recipe checks; no multi-process runs.
FAST := tests/test_cli.py tests/test_models.py tests/test_data.py tests/test_champion.py tests/test_resume_flags.py \
	tests/test_promotion_faults.py tests/test_gcs_lock.py tests/test_disk_full.py
test-fast: $(STAMP)
	$(PY) -m pytest -q $(FAST)

clean:
	rm -rf $(VENV) $(KERAS_VENV) runs build dist *.egg-info
