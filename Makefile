# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs the package (with test extras) when missing.
# TensorFlow 2.15 has wheels for Python 3.9-3.11 only: prefer those interpreters.
PYTHON ?= $(shell command -v python3.11 || command -v python3.10 || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast install clean

$(STAMP): setup.py
	@test -x $(PY) || $(PYTHON) -c 'import sys; sys.exit(not (3, 9) <= sys.version_info[:2] <= (3, 11))' || { \
	  echo "error: TensorFlow 2.15 needs Python 3.9-3.11, but $(PYTHON) is $$($(PYTHON) --version 2>&1); install Python 3.11 or 3.10 (e.g. 'uv python install 3.11' or your OS packages) and run: make PYTHON=/path/to/python3.11" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[cpu,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash scripts/demo.sh

test: $(STAMP)
	$(PY) -m pytest -q tests

# A few minutes, for iterating: flags, data, models, the champion store, recipe checks; no multi-process runs.
FAST := tests/test_cli.py tests/test_models.py tests/test_data.py tests/test_champion.py tests/test_resume_flags.py \
	tests/test_promotion_faults.py tests/test_gcs_lock.py tests/test_disk_full.py
test-fast: $(STAMP)
	$(PY) -m pytest -q $(FAST)

clean:
	rm -rf $(VENV) runs build dist *.egg-info
