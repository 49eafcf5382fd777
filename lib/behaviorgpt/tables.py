"""Read and write the pipeline's Delta tables, each through one function that owns its path.

Every write is idempotent for a rerun of the same date: a table is either overwritten per
partition (`dynamic` partition overwrite, so only the dates in the new data are replaced) or
by an explicit `replaceWhere` predicate. Column layouts are documented in `docs/tables.md`.
"""

from __future__ import annotations

import logging

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession

from behaviorgpt.layout import Layout

log = logging.getLogger(__name__)


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
