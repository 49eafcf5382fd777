"""Every Spark stage under a `local-cluster[2,1,2048]` master: two executor JVMs with their
own Python workers, as on a cluster, so driver-side state, closures that do not pickle and
files that only the driver can see fail here.

The run needs its own SparkSession, so the CLI runs in a child process. The test process's
session-wide `spark` fixture then reads the tables that the child wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyspark
import pytest
from pyspark.sql import functions as F

from behaviorgpt.layout import EVENTS_TABLE, PROFILES_TABLE, SESSIONS_TABLE, Layout
from behaviorgpt.spark import LOCAL_CLUSTER_HOME
from behaviorgpt.tables import read_table

CLUSTER_SETTINGS = [
    "spark.master=local-cluster[2,1,2048]",
    "spark.shuffle_partitions=2",
    "spark.extra={'spark.ui.enabled': 'false', "
    "'spark.databricks.delta.snapshotPartitions': '1', "
    "'spark.sql.sources.parallelPartitionDiscovery.parallelism': '2', "
    "'spark.default.parallelism': '2'}",
    "generator.users=80",
    "train.epochs=1",
]


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("local_cluster")
    command = [sys.executable, "-m", "behaviorgpt.cli", "run", "--root", str(root),
               "--date", "2017-12-04"]
    for setting in CLUSTER_SETTINGS:
        command += ["--set", setting]

    # The child must not inherit a SPARK_HOME or interpreter choice from the test's shell:
    # the point is that the pipeline finds both on its own.
    env = {name: value for name, value in os.environ.items()
           if name not in ("SPARK_HOME", "PYSPARK_PYTHON")}
    env.update({"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"})
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return Layout.from_root(root), result


@pytest.mark.slow
def test_local_cluster_runs_every_stage(spark, cluster_run):
    layout, result = cluster_run

    stats = read_table(spark, layout, "ingest_runs").first()
    events = read_table(spark, layout, EVENTS_TABLE)
    sessions = read_table(spark, layout, SESSIONS_TABLE)
    profiles = read_table(spark, layout, PROFILES_TABLE)
    manifest = json.loads((layout.sequences_dir / "manifest.json").read_text())

    # Ingest: every line accounted for, and the generator's clean log loses none.
    assert stats["lines_read"] > 1000
    assert stats["lines_read"] == stats["accepted"] + stats["quarantined"] + stats["duplicates"]
    assert events.count() == stats["accepted"]

    # Sessionize: the sessions hold exactly the accepted events.
    assert sessions.agg(F.sum("event_count")).first()[0] == stats["accepted"]

    # Sequences: one row per user, split over the configured two shards.
    assert manifest["num_shards"] == 2
    assert manifest["rows"] == events.select("user_key").distinct().count()

    # Scoring ran the model in the executors' Python workers: one profile per sequence.
    assert profiles.count() == manifest["rows"]
    assert profiles.where(F.size("top_items") != 10).count() == 0
    assert "stage score: finished" in result.stderr


@pytest.mark.slow
def test_local_cluster_executors_write_under_root(cluster_run):
    layout, _ = cluster_run
    spark_home = layout.root / LOCAL_CLUSTER_HOME
    package_home = Path(pyspark.__file__).resolve().parent
    executor_logs = list((spark_home / "work").glob("app-*/*/stderr"))

    # Two workers with one core each: at least two executors, each with its own log.
    assert len(executor_logs) >= 2
    assert (spark_home / "jars").resolve() == package_home / "jars"
    # The executors used the private Spark home, not the pip package's folder.
    assert any("CoarseGrainedExecutorBackend" in path.read_text(errors="replace")
               for path in executor_logs)
