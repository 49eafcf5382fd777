"""DAG integrity: Airflow, from its own .venv-airflow, loads the nightly DAG without errors.

Airflow is not installed in the project's environment (its pins conflict with pyspark's and
torch's), so the DAG is loaded by that venv's interpreter in a subprocess. `make test` creates
the venv; without it the test is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import REPO_ROOT

AIRFLOW_PYTHON = REPO_ROOT / ".venv-airflow" / "bin" / "python"

# Runs inside .venv-airflow: parse the DAG folder, then print what the test checks as JSON.
LOAD_DAG = """
import json, sys
import pendulum
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags.get("behaviorgpt_nightly")
report = {"import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
          "dag_ids": sorted(bag.dags)}
if dag is not None:
    train = dag.get_task("train")
    warm_start = next(arg for arg in train.application_args if "warm_start" in arg)
    template = dag.get_template_env().from_string(warm_start)
    params = {"full_retrain_weekday": dag.params["full_retrain_weekday"]}
    report.update(
        tasks={task.task_id: {"upstream": sorted(task.upstream_task_ids),
                              "type": type(task).__name__, "retries": task.retries,
                              "application": getattr(task, "application", None),
                              "packages": getattr(task, "packages", None),
                              "args": list(getattr(task, "application_args", None) or [])}
               for task in dag.tasks},
        max_active_runs=dag.max_active_runs,
        # 2017-12-03 was a Sunday, the default full-retrain day; 2017-12-04 a Monday.
        sunday=template.render(data_interval_start=pendulum.datetime(2017, 12, 3), params=params),
        monday=template.render(data_interval_start=pendulum.datetime(2017, 12, 4), params=params))
print(json.dumps(report))
"""

PIPELINE = ["ingest", "sessionize", "sequences", "train", "evaluate", "quality_gate", "score"]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    if not AIRFLOW_PYTHON.is_file():
        pytest.skip(f"{AIRFLOW_PYTHON} not found: `make test` (or `make airflow`) creates it")
    home = tmp_path_factory.mktemp("airflow-home")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "BEHAVIORGPT_INPUT_ROOT": "/data/raw"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([str(AIRFLOW_PYTHON), "-c", LOAD_DAG,
                             str(REPO_ROOT / "jobs" / "airflow")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_dag_has_no_import_errors(loaded):
    assert loaded["import_errors"] == {}
    assert loaded["dag_ids"] == ["behaviorgpt_nightly"]


def test_dag_tasks_run_in_pipeline_order(loaded):
    tasks = loaded["tasks"]

    assert sorted(tasks) == sorted(PIPELINE)
    for upstream, task in zip(PIPELINE, PIPELINE[1:]):
        assert tasks[task]["upstream"] == [upstream]
    assert tasks["ingest"]["upstream"] == []
    assert loaded["max_active_runs"] == 1


def test_dag_tasks_spark_submit_job_scripts(loaded):
    for name, task in loaded["tasks"].items():
        assert task["type"] == "SparkSubmitOperator"
        assert task["packages"] == "io.delta:delta-spark_4.2_2.13:4.4.0"
        assert (REPO_ROOT / task["application"]).is_file(), name
        assert task["args"][:2] == ["--date", "{{ ds }}"]
        assert "{{ run_id }}" in task["args"]
        assert task["retries"] == 2
    assert loaded["tasks"]["ingest"]["args"][-2:] == ["--input", "/data/raw/{{ ds }}"]


def test_train_warm_starts_except_on_retrain_day(loaded):
    assert loaded["sunday"] == "train.warm_start=false"
    assert loaded["monday"] == "train.warm_start=true"
