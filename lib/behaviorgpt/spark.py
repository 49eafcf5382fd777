"""Build the SparkSession every Spark job uses, with Delta Lake enabled.

By default the Delta jars are resolved from Maven Central through `spark.jars.packages` on the
first start and cached by Ivy (`spark.ivy_cache` sets the folder). Offline, set
`spark.resolve_delta_jars: false` and list jar files already on disk in `spark.jars`.
Under `spark-submit` the session already exists and the settings given on the command line win.

A session started from a plain Python process (not spark-submit) also pins the executors'
Python to this interpreter. With a `local-cluster[...]` master it gives the standalone workers
a private Spark home, because their work folder is `$SPARK_HOME/work` (see
`prepare_local_cluster_home`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from behaviorgpt.config import PipelineConfig

log = logging.getLogger(__name__)

LOCAL_CLUSTER_HOME = "spark-local-cluster"
"""Folder under the run's root that serves as SPARK_HOME for a `local-cluster` master."""

DELTA_SETTINGS = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def build_spark_session(config: PipelineConfig) -> SparkSession:
    """Return the active SparkSession or start one configured for Delta and this pipeline."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active

    settings = spark_settings(config)
    builder = SparkSession.builder.appName(config.spark.app_name)

    # PySpark picks the UDF workers' interpreter from PYSPARK_PYTHON (default: `python3` on
    # PATH), not from spark.pyspark.python, so without this a shell whose PATH lacks the venv
    # starts workers that cannot import pandas or torch.
    if not launched_by_spark_submit():
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    # Under spark-submit the master and the jars come from its command line, which must win.
    if not launched_by_spark_submit():
        builder = builder.master(config.spark.master)
        # pyspark 4.2 gives executors the interpreter named by PYSPARK_PYTHON, default
        # `python3` on the PATH, and ignores spark.pyspark.python unless spark-submit
        # launched the driver. Executors that run another interpreter miss this one's
        # packages (pandas, torch) as soon as they run in their own processes.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        if config.spark.master.startswith("local-cluster"):
            prepare_local_cluster_home(Path(config.paths.root).expanduser() / LOCAL_CLUSTER_HOME)

    for key, value in settings.items():
        builder = builder.config(key, value)

    log.info("starting Spark (master=%s)", config.spark.master)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def spark_settings(config: PipelineConfig) -> dict[str, str]:
    """Spark settings derived from the config, Delta included, as plain strings."""
    settings = dict(DELTA_SETTINGS)
    settings.update({
        "spark.sql.shuffle.partitions": str(config.spark.shuffle_partitions),
        "spark.driver.memory": config.spark.driver_memory,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(config.spark.arrow_max_records_per_batch),
        "spark.sql.execution.arrow.maxBytesPerBatch": str(config.spark.arrow_max_bytes_per_batch),
        "spark.ui.showConsoleProgress": "false",
        # Honoured when spark-submit starts the driver; a driver started from plain Python
        # sets PYSPARK_PYTHON instead (see build_spark_session).
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
    })

    if config.spark.resolve_delta_jars and not launched_by_spark_submit():
        settings["spark.jars.packages"] = config.spark.delta_package
        if config.spark.ivy_cache:
            settings["spark.jars.ivy"] = str(Path(config.spark.ivy_cache).expanduser())
    if config.spark.jars:
        settings["spark.jars"] = ",".join(str(Path(jar).expanduser()) for jar in config.spark.jars)

    settings.update({key: str(value) for key, value in config.spark.extra.items()})
    return settings


def prepare_local_cluster_home(folder: Path) -> None:
    """Point SPARK_HOME at `folder`, a copy of pyspark's Spark home made of symlinks.

    A `local-cluster[workers,cores,MiB]` master runs standalone workers inside the driver JVM.
    Each worker launches its executors with `$SPARK_HOME/bin` and `$SPARK_HOME/jars` and
    writes their logs and scratch files to `$SPARK_HOME/work` (Spark 4.2 gives no setting for
    that folder in this mode). The pip package of pyspark is its own Spark home, so without
    this the executors would write into the shared, possibly read-only, site-packages. The
    symlinks keep bin, jars and python from the package; `work` is a real folder under the
    run's root. An operator's own SPARK_HOME is left as it is.
    """
    if "SPARK_HOME" in os.environ:
        log.info("local-cluster executors use SPARK_HOME=%s", os.environ["SPARK_HOME"])
        return

    import pyspark

    # The pip package has bin/, jars/ and python/ next to its __init__.py.
    package_home = Path(pyspark.__file__).resolve().parent
    if not (package_home / "bin" / "spark-submit").is_file():
        raise RuntimeError(f"pyspark at {package_home} has no bin/spark-submit, so it is not a "
                           f"pip-installed Spark home. Fix: set SPARK_HOME to a Spark 4.2 "
                           f"installation before using a local-cluster master")
    folder.mkdir(parents=True, exist_ok=True)
    for entry in package_home.iterdir():
        link = folder / entry.name
        if entry.name == "work" or link.exists() or link.is_symlink():
            continue
        link.symlink_to(entry)
    (folder / "work").mkdir(exist_ok=True)
    os.environ["SPARK_HOME"] = str(folder)
    log.info("local-cluster executors use SPARK_HOME=%s (links to %s)", folder, package_home)


def launched_by_spark_submit() -> bool:
    """Return whether spark-submit (or pyspark's shell) started this Python process."""
    return "PYSPARK_GATEWAY_PORT" in os.environ
