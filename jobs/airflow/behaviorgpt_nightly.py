"""Airflow DAG of the nightly behaviorgpt run: one day of events in, fresh interest profiles out.

    ingest -> sessionize -> sequences -> train -> evaluate -> quality_gate -> score

The run for day D (`{{ ds }}`) starts at 00:00 UTC on D+1. Every task is `spark-submit` of one
script in `jobs/`, so the task gets the same Delta jars and settings locally, on YARN and on
Kubernetes, and every task writes its row to the `pipeline_runs` table. Training runs
`torchrun` on the node that runs the driver: give the `train` task a GPU worker queue and
client deploy mode.

Retries are safe because every task is idempotent for its date: ingest and sessionize replace
the partitions of day D, sequences and scoring rewrite their outputs, the quality gate repeats
its saved decision, and `pipeline_runs` keeps one row per (Airflow run id, task).

The DAG imports nothing from behaviorgpt, so the scheduler parses it without pyspark or torch.
Deployment settings come from the environment of the scheduler and workers:

- BEHAVIORGPT_HOME: checkout (or unpacked release) holding `jobs/` (default: two folders up);
- BEHAVIORGPT_PROFILE: config profile (default `cluster`);
- BEHAVIORGPT_INPUT_ROOT: folder with one sub-folder of raw logs per day, `<root>/<YYYY-MM-DD>`;
- BEHAVIORGPT_SPARK_CONN: Airflow connection of the Spark master (default `spark_default`);
- BEHAVIORGPT_SPARK_ARCHIVES: packed virtual environment shipped to executors, e.g.
  `hdfs:///envs/behaviorgpt.tar.gz#environment` (default: none, the package is in the image);
- BEHAVIORGPT_GPU_QUEUE: worker queue of GPU nodes for the train task (default `default`).

Run-time parameters (Trigger DAG w/ config): `full_retrain_weekday` (0 Monday ... 6 Sunday):
training starts from random weights on that weekday and fine-tunes the serving model
(`train.warm_start=true`) on the others.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, CronDataIntervalTimetable, Param

HOME = Path(os.environ.get("BEHAVIORGPT_HOME", Path(__file__).resolve().parents[2]))
PROFILE = os.environ.get("BEHAVIORGPT_PROFILE", "cluster")
INPUT_ROOT = os.environ.get("BEHAVIORGPT_INPUT_ROOT", "/mnt/behaviorgpt/raw")
SPARK_CONN = os.environ.get("BEHAVIORGPT_SPARK_CONN", "spark_default")
SPARK_ARCHIVES = os.environ.get("BEHAVIORGPT_SPARK_ARCHIVES") or None
GPU_QUEUE = os.environ.get("BEHAVIORGPT_GPU_QUEUE", "default")

DELTA_PACKAGE = "io.delta:delta-spark_4.2_2.13:4.4.0"
"""Delta jars for Spark 4.2, resolved by spark-submit and shipped to the executors."""

# With a packed environment, executors run its interpreter; otherwise the image's python3.
SPARK_CONF = {"spark.pyspark.python": "./environment/bin/python"} if SPARK_ARCHIVES else {}

# Jinja: "true" except on the full-retrain weekday of the processed day.
WARM_START = ("{{ 'false' if data_interval_start.weekday() == params.full_retrain_weekday "
              "else 'true' }}")


def stage_arguments(*extra: str) -> list[str]:
    """Command-line options every stage gets: the day, the profile and the Airflow run id."""
    return ["--date", "{{ ds }}", "--profile", PROFILE, "--run-id", "{{ run_id }}", *extra]


def spark_stage(task_id: str, script: str, *extra: str, **options) -> SparkSubmitOperator:
    """Build a task that spark-submits `jobs/<script>` for the processed day."""
    return SparkSubmitOperator(
        task_id=task_id,
        application=str(HOME / "jobs" / script),
        application_args=stage_arguments(*extra),
        conn_id=SPARK_CONN,
        packages=DELTA_PACKAGE,
        archives=SPARK_ARCHIVES,
        conf=SPARK_CONF,
        name=f"behaviorgpt-{task_id}-{{{{ ds }}}}",
        **options,
    )


with DAG(
    dag_id="behaviorgpt_nightly",
    description="Ingest one day of behaviour events, retrain, gate and rescore interest profiles",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    # Stages of two days must not interleave: they rewrite the same tables and model pointers.
    max_active_runs=1,
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=10),
        "execution_timeout": timedelta(hours=6),
    },
    params={
        "full_retrain_weekday": Param(
            6, type="integer", minimum=0, maximum=6,
            description="Weekday of the full retrain (0 Monday ... 6 Sunday); other days warm-start."),
    },
    tags=["behaviorgpt"],
) as dag:
    ingest = spark_stage("ingest", "ingest.py", "--input", f"{INPUT_ROOT}/{{{{ ds }}}}")
    sessionize = spark_stage("sessionize", "sessionize.py")
    sequences = spark_stage("sequences", "sequences.py")
    train = spark_stage("train", "train_stage.py", "--set", f"train.warm_start={WARM_START}",
                        deploy_mode="client", queue=GPU_QUEUE)
    evaluate = spark_stage("evaluate", "evaluate.py", deploy_mode="client", queue=GPU_QUEUE)
    quality_gate = spark_stage("quality_gate", "gate.py")
    score = spark_stage("score", "score.py")

    ingest >> sessionize >> sequences >> train >> evaluate >> quality_gate >> score
