"""Read and write the pipeline's Delta tables, each through one function that owns its path.

Every write is idempotent for a rerun of the same date: a table is either overwritten per
partition (`dynamic` partition overwrite, so only the dates in the new data are replaced) or
by an explicit `replaceWhere` predicate. Column layouts are documented in `docs/tables.md`.
"""

from __future__ import annotations

import datetime
import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from delta.exceptions.base import (ConcurrentAppendException,
                                   ConcurrentDeleteDeleteException,
                                   ConcurrentDeleteReadException,
                                   ConcurrentTransactionException, ConcurrentWriteException,
                                   DeltaConcurrentModificationException,
                                   MetadataChangedException, ProtocolChangedException)
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from behaviorgpt.layout import MODEL_METRICS_COLUMNS, MODEL_METRICS_TABLE, Layout
from behaviorgpt.validation import check_identifier, quote_identifier, sql_path

log = logging.getLogger(__name__)

COMMIT_CONFLICTS = (DeltaConcurrentModificationException, ConcurrentWriteException,
                    MetadataChangedException, ProtocolChangedException,
                    ConcurrentAppendException, ConcurrentDeleteReadException,
                    ConcurrentDeleteDeleteException, ConcurrentTransactionException)
"""Delta's commit-conflict exceptions (delta-spark 4.4). In Python they share no base class
besides PySparkException, so they are listed one by one."""

Result = TypeVar("Result")


class CommitConflictError(RuntimeError):
    """A Delta commit kept conflicting with concurrent writers after every allowed attempt."""


def retry_commit_conflicts(operation: Callable[[], Result], *, table: str, attempts: int,
                           backoff_seconds: float) -> tuple[Result, int]:
    """Run `operation`, a whole Delta transaction, again while it fails on a commit conflict.

    A conflict means another writer committed to the table after this transaction read it.
    Rerunning the whole operation reads the new version, so the retry includes the other
    writer's rows and neither writer's rows are lost. The wait before retry n (n >= 1) is
    `backoff_seconds * 2**(n-1)` times a random factor in [1, 2), so that two writers that
    collided do not collide again in lockstep.

    Returns:
        The operation's result and the number of attempts it took.

    Raises:
        CommitConflictError: the last of `attempts` attempts still conflicted; the Delta
            exception is its cause.
    """
    for attempt in range(1, attempts + 1):
        try:
            return operation(), attempt
        except COMMIT_CONFLICTS as error:
            conflict = type(error).__name__
            if attempt == attempts:
                raise CommitConflictError(
                    f"Delta table {table!r}: the commit conflicted with a concurrent writer "
                    f"{attempts} times ({conflict}) and was given up. Nothing of this attempt "
                    f"was committed. Fix: rerun the job when the other writer has finished, "
                    f"or raise score.commit_attempts") from error
            delay = backoff_seconds * 2 ** (attempt - 1) * (1 + random.random())
            log.warning("Delta table %s: commit conflict (%s) on attempt %d of %d; retrying "
                        "in %.1f s", table, conflict, attempt, attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")


def deduplicate(df: DataFrame, key: str, *, newest_first: list[str]) -> DataFrame:
    """Keep one row per `key`: the first by the `newest_first` columns, all descending.

    MERGE fails when two source rows match one target row, so every upsert source goes
    through here. A final tie-break on the whole row as JSON makes the pick deterministic
    among rows that tie on every ordering column, so reruns choose the same row.
    """
    ordering = [F.col(name).desc_nulls_last() for name in newest_first]
    ordering.append(F.to_json(F.struct(*df.columns)).asc())
    ranked = df.withColumn("_row", F.row_number().over(Window.partitionBy(key).orderBy(*ordering)))
    return ranked.where(F.col("_row") == 1).drop("_row")


def table_exists(layout: Layout, name: str) -> bool:
    """Return whether the Delta table `name` has been written."""
    return (layout.table(name) / "_delta_log").is_dir()


def read_table(spark: SparkSession, layout: Layout, name: str) -> DataFrame:
    """Read the Delta table `name` by path."""
    path = layout.table(name)
    if not (path / "_delta_log").is_dir():
        raise FileNotFoundError(f"Delta table {name!r} not found at {path}: run the stage that "
                                f"writes it first")
    return spark.read.format("delta").load(str(path))


def table_version(spark: SparkSession, layout: Layout, name: str) -> int | None:
    """Latest commit version of the Delta table `name`, or None when it does not exist yet.

    Reads one entry of the table's history (the transaction log), not its data.
    """
    path = layout.table(name)
    if not (path / "_delta_log").is_dir():
        return None
    latest = DeltaTable.forPath(spark, str(path)).history(1).select("version").first()
    return int(latest["version"])


def write_table(df: DataFrame, layout: Layout, name: str, *, partition_by: list[str] | None = None,
                replace_where: str | None = None, overwrite_partitions: bool = False) -> None:
    """Write `df` to the Delta table `name`.

    With `replace_where`, rows matching the predicate are replaced atomically and the rest kept;
    with `overwrite_partitions`, only the partitions present in `df` are replaced; with neither,
    the whole table is overwritten. Either way a rerun with the same input gives the same table.
    """
    path = str(layout.table(name))
    writer = df.write.format("delta").mode("overwrite")
    if partition_by:
        writer = writer.partitionBy(*partition_by)

    table_exists = (layout.table(name) / "_delta_log").is_dir()
    if replace_where and table_exists:
        writer = writer.option("replaceWhere", replace_where)
    elif overwrite_partitions and table_exists:
        writer = writer.option("partitionOverwriteMode", "dynamic")

    writer.save(path)
    log.info("wrote Delta table %s at %s", name, path)


def merge_table(spark: SparkSession, source: DataFrame, layout: Layout, name: str, *, key: str,
                newest_first: list[str], attempts: int, backoff_seconds: float) -> int:
    """Upsert `source` into the Delta table `name`, one row per `key`, and return the attempts.

    The table is created with the source's schema when it does not exist. Duplicate keys in
    `source` keep the newest row by `newest_first` (see `deduplicate`). A matched row is
    replaced only when the source's `newest_first[0]` column is >= the table's, so a rerun of
    an older date cannot overwrite a newer row. Commit conflicts are retried by
    `retry_commit_conflicts`.
    """
    from delta.tables import DeltaTable

    path = str(layout.table(name))
    unique = deduplicate(source, key, newest_first=newest_first)
    # Column names enter the MERGE condition as SQL text, so each is checked and quoted.
    key_column = quote_identifier(key, "merge key")
    newer_or_equal = quote_identifier(newest_first[0], "merge ordering column")

    def upsert() -> None:
        # Creating inside the retried operation: two first runs may race to create the table.
        # An empty write (rather than DeltaTable.createIfNotExists) makes nested fields
        # nullable, because Delta rejects NOT NULL inside arrays. limit(0) runs no source job.
        source.limit(0).write.format("delta").mode("ignore").save(path)
        target = DeltaTable.forPath(spark, path)
        (target.alias("target")
         .merge(unique.alias("source"), f"target.{key_column} = source.{key_column}")
         .whenMatchedUpdateAll(
             condition=f"source.{newer_or_equal} >= target.{newer_or_equal}")
         .whenNotMatchedInsertAll()
         .execute())

    _, used = retry_commit_conflicts(upsert, table=name, attempts=attempts,
                                     backoff_seconds=backoff_seconds)
    log.info("merged into Delta table %s at %s (%d attempt(s))", name, path, used)
    return used


def check_catalog_name(identifier: str, key: str = "score.database") -> None:
    """Raise ConfigError (a ValueError) unless `identifier` is safe in SQL as a catalog name."""
    check_identifier(identifier, key)


def register_table(spark: SparkSession, layout: Layout, name: str, database: str) -> str:
    """Register the Delta table `name` in the Spark catalog as `database.name`, by path.

    The catalog entry points at the table's folder, so path readers and SQL readers see the
    same data. Returns the qualified name. Re-registering an existing entry is a no-op.

    NOTE: in local mode Spark's catalog lives in memory and is gone with the session; on a
    cluster with a Hive metastore or Unity Catalog the entry persists. An entry that already
    exists is kept even when it points at another root, so one catalog database should serve
    one `paths.root`.
    """
    database_name = quote_identifier(database, "score.database")
    table_name = quote_identifier(name, "table name")
    location = sql_path(layout.table(name), "paths.root")
    database_dir = sql_path(layout.catalog_database_dir(database), "paths.root")

    spark.sql(f"CREATE DATABASE IF NOT EXISTS {database_name} LOCATION {database_dir}")
    spark.sql(f"CREATE TABLE IF NOT EXISTS {database_name}.{table_name} USING DELTA "
              f"LOCATION {location}")
    return f"{database}.{name}"


def model_metrics_schema() -> str:
    """Spark DDL schema of `model_metrics`, built from `layout.MODEL_METRICS_COLUMNS`."""
    return ", ".join(f"{name} {kind}" for name, kind in MODEL_METRICS_COLUMNS)


def write_model_metrics(spark: SparkSession, layout: Layout, rows: list[dict], *, run_id: str,
                        run_date: str, evaluated_at: datetime.datetime) -> int:
    """Replace the `model_metrics` rows of `run_id` with `rows`; return the rows written.

    `rows` come from `evaluate.metric_rows` (a few hundred per run, built on the driver: they
    are aggregates, not per-user data). The replacement is one Delta commit with a
    `replaceWhere` on run_id, so a rerun of the same run never duplicates rows and readers see
    either the old rows or the new ones. Other runs' rows are untouched.
    """
    run_id_literal = run_id.replace("'", "''")
    stamped = [{**row, "run_id": run_id, "run_date": datetime.date.fromisoformat(run_date),
                "evaluated_at": evaluated_at} for row in rows]
    names = [name for name, _ in MODEL_METRICS_COLUMNS]
    frame = spark.createDataFrame([tuple(row[name] for name in names) for row in stamped],
                                  model_metrics_schema())
    write_table(frame, layout, MODEL_METRICS_TABLE, partition_by=["run_date"],
                replace_where=f"run_id = '{run_id_literal}'")
    return len(stamped)
