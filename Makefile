# Two commands do all the setup on a fresh machine:
#   make repro   -> creates the virtual environment if needed, then runs `dvc repro`
#   make test    -> creates the virtual environment if needed, then runs `pytest`
VENV ?= .venv
PYTHON ?= python3
STAMP := .venv-installed

.PHONY: repro test install

install: $(STAMP)

# Re-install when the dependencies change; the stamp lives in the checkout so a venv shared
# between clones (VENV=...) still gets this checkout's editable install.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev,team]"
	touch $(STAMP)

repro: $(STAMP)
	. $(VENV)/bin/activate && dvc repro

test: $(STAMP)
	. $(VENV)/bin/activate && pytest
