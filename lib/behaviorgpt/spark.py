"""Build the SparkSession every Spark job uses, with Delta Lake enabled.

By default the Delta jars are resolved from Maven Central through `spark.jars.packages` on the
first start and cached by Ivy (`spark.ivy_cache` sets the folder). Offline, set
`spark.resolve_delta_jars: false` and list jar files already on disk in `spark.jars`.
Under `spark-submit` the session already exists and the settings given on the command line win.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from behaviorgpt.config import PipelineConfig

log = logging.getLogger(__name__)

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

    # Under spark-submit the master and the jars come from its command line, which must win.
    if not launched_by_spark_submit():
        builder = builder.master(config.spark.master)
        # A SparkContext started from Python picks its workers' interpreter from
        # PYSPARK_PYTHON (default `python3` on PATH) and ignores spark.pyspark.python, so
        # without this the Python UDFs could run outside this virtual environment.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

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
        "spark.ui.showConsoleProgress": "false",
        # Executors' Python workers must run the same interpreter as the driver in local mode.
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


def launched_by_spark_submit() -> bool:
    """Return whether spark-submit (or pyspark's shell) started this Python process."""
    return "PYSPARK_GATEWAY_PORT" in os.environ
