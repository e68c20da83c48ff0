# make demo : train baseline and SAST on the embedded default and print the transfer-gap table
# make test : the test suite (what CI runs)
# make test-fast : the tests not marked slow (each under about 5 s)
# Both create .venv with Python 3.10 (the version Lava requires) when it is missing.

VENV := .venv
PY := $(VENV)/bin/python
# python3.10 from PATH, else a pyenv or system install (pyenv's shim fails when 3.10 is not its global)
PYTHON310 ?= $(shell for c in python3.10 $$HOME/.pyenv/versions/3.10*/bin/python3.10 /usr/local/bin/python3.10 /usr/bin/python3.10; do \
	$$c -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1 && { echo $$c; break; }; done)

.PHONY: demo test test-fast venv clean bench

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@if [ ! -x $(PY) ]; then \
		if [ -z "$(PYTHON310)" ]; then \
			echo "error: python3.10 not found. Lava (lava-nc 0.10, lava-dl 0.6) needs Python >=3.10,<3.11:"; \
			echo "install it (e.g. 'pyenv install 3.10', 'apt-get install python3.10-venv') or pass PYTHON310=/path/to/python3.10"; \
			exit 1; \
		fi; \
		echo "creating $(VENV) with $(PYTHON310)"; \
		$(PYTHON310) -m venv $(VENV); \
	fi
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $@

demo: venv
	$(VENV)/bin/sast-deploy demo

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

bench: venv
	$(PY) benchmarks/sast_step_time.py

clean:
	rm -rf $(VENV) runs .pytest_cache
