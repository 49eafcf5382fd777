# Set-up and the two everyday commands. Both install what they need into .venv first.
#   make demo   run the whole pipeline on the embedded generated log
#   make test   run the test suite; it also installs Airflow into .venv-airflow, a separate
#               environment, for the test that loads the nightly DAG

PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed
# Airflow pins many packages that pyspark and torch also need, so it lives in its own venv.
AIRFLOW_VENV := .venv-airflow
AIRFLOW_INSTALLED := $(AIRFLOW_VENV)/.installed
AIRFLOW_PINS := jobs/airflow/requirements.txt jobs/airflow/constraints.txt

.PHONY: demo test install airflow clean

install: $(INSTALLED)

airflow: $(AIRFLOW_INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e ".[dev]"
	touch $(INSTALLED)

$(AIRFLOW_INSTALLED): $(AIRFLOW_PINS)
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install -r jobs/airflow/requirements.txt -c jobs/airflow/constraints.txt
	touch $(AIRFLOW_INSTALLED)

demo: $(INSTALLED)
	$(VENV)/bin/behaviorgpt run

test: $(INSTALLED) $(AIRFLOW_INSTALLED)
	$(VENV)/bin/pytest

clean:
	rm -rf warehouse spark-warehouse metastore_db derby.log .pytest_cache
