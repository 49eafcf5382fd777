# Set-up and the two everyday commands. Both install what they need into .venv first.
#   make demo   run the whole pipeline on the embedded generated log
#   make test   run the test suite

PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed

.PHONY: demo test install clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e ".[dev]"
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(VENV)/bin/behaviorgpt run

test: $(INSTALLED)
	$(VENV)/bin/pytest

clean:
	rm -rf warehouse spark-warehouse metastore_db derby.log .pytest_cache
