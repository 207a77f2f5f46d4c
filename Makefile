# The README's two commands: `make repro` runs the pipeline, `make test` runs the tests.
# Both create the virtual environment in .venv on first use and reuse it afterwards (no reinstall
# unless pyproject.toml or requirements.lock changed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN := PATH="$(CURDIR)/$(BIN):$$PATH"

.PHONY: repro test test-fast bench lock exp dvc

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

repro: $(STAMP)
	$(RUN) dvc repro

test: $(STAMP)
	$(RUN) python -m pytest

test-fast: $(STAMP)
	$(RUN) python -m pytest -m "not slow"

# Any dvc command inside the project's environment, e.g. make exp ARGS="-S mix.strategy=average"
exp: $(STAMP)
	$(RUN) dvc exp run $(ARGS)

dvc: $(STAMP)
	$(RUN) dvc $(ARGS)

bench: $(STAMP)
	$(RUN) sh -c 'for b in bench/[!_]*.py; do python "$$b" || exit 1; done'

# Refresh the pinned versions after changing dependencies in pyproject.toml.
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable --disable-pip-version-check | grep -v '^sslam' > requirements.lock
