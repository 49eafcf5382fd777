"""Retention: keep a user's events no longer than `retention.days` before the run date.

Two parts. `within_retention` leaves old events out of the sessions that feed the training
sequences, so a model never learns from them. `apply_retention`, run by `behaviorgpt
maintain`, deletes old rows from the Delta tables that hold per-user data and then runs
Delta VACUUM. VACUUM is needed because a Delta DELETE only writes new files without the
rows. The old files, rows included, stay readable by time travel until VACUUM removes them.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from behaviorgpt.config import DELTA_VACUUM_SAFETY_HOURS, RetentionConfig
from behaviorgpt.layout import (EVENTS_TABLE, PROFILES_HISTORY_TABLE, PROFILES_TABLE,
                                QUARANTINE_TABLE, SESSIONS_TABLE, Layout)
from behaviorgpt.tables import table_exists

log = logging.getLogger(__name__)

RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"
"""Spark setting of Delta's check that rejects a VACUUM shorter than the table's retention."""


@dataclass(frozen=True)
class Cutoff:
    """First instant that is kept: midnight UTC, `retention.days` days before the run date."""

    day: dt.date

    @classmethod
    def for_run(cls, run_date: str, days: int) -> "Cutoff":
        return cls(dt.date.fromisoformat(run_date) - dt.timedelta(days=days))

    def date(self) -> Column:
        return F.lit(self.day)

    def timestamp(self) -> Column:
        # From Unix seconds, so neither the machine's nor Spark's session time zone matters.
        start = dt.datetime.combine(self.day, dt.time(), dt.timezone.utc)
        return F.timestamp_seconds(F.lit(int(start.timestamp())))


def expired_rows(cutoff: Cutoff) -> dict[str, Column]:
    """Return, per table, the condition that marks a row as older than the cutoff.

    Events go by their UTC date and quarantine rows by the date they were read (a rejected
    line has no trusted event time). A session goes when its last event is older, so a session
    that spans the cutoff stays whole in `sessions`. `within_retention` still drops its old
    events from training. A profile goes when the user's last event is older, and a profile
    history row with the run date that wrote it.
    """
    return {
        EVENTS_TABLE: F.col("event_date") < cutoff.date(),
        SESSIONS_TABLE: F.col("session_end") < cutoff.timestamp(),
        QUARANTINE_TABLE: F.col("run_date") < cutoff.date(),
        PROFILES_HISTORY_TABLE: F.col("run_date") < cutoff.date(),
        PROFILES_TABLE: F.col("last_event_time") < cutoff.timestamp(),
    }


RETAINED_TABLES = (EVENTS_TABLE, SESSIONS_TABLE, QUARANTINE_TABLE, PROFILES_HISTORY_TABLE,
                   PROFILES_TABLE)
"""Tables that `apply_retention` deletes from and vacuums (the keys of `expired_rows`)."""


def within_retention(sessions: DataFrame, run_date: str, days: int) -> DataFrame:
    """Return `sessions` without the events older than the cutoff; 0 days keeps everything.

    A session whose events are all older is dropped. In a session that spans the cutoff, the
    first kept event becomes the session's first event for the sequences.
    """
    if days <= 0:
        return sessions
    cutoff = Cutoff.for_run(run_date, days).timestamp()
    kept = sessions.withColumn("events", F.filter("events", lambda event:
                                                  event["event_time"] >= cutoff))
    return kept.where(F.size("events") > 0)


def apply_retention(spark: SparkSession, layout: Layout, run_date: str,
                    settings: RetentionConfig) -> dict[str, int]:
    """Delete rows older than the cutoff from `RETAINED_TABLES`, then VACUUM each table.

    Returns the rows deleted per table. With `settings.days == 0` nothing is deleted, but the
    tables are still vacuumed. Tables not written yet are skipped.
    """
    deleted: dict[str, int] = {}
    conditions = expired_rows(Cutoff.for_run(run_date, settings.days))
    for name, condition in conditions.items():
        if not table_exists(layout, name):
            continue
        table = DeltaTable.forPath(spark, str(layout.table(name)))
        if settings.days > 0:
            before = _latest_version(table)
            table.delete(condition)
            deleted[name] = _deleted_rows(table, before)
            log.info("retention: deleted %d rows older than %s from %s", deleted[name],
                     Cutoff.for_run(run_date, settings.days).day, name)
        vacuum(spark, table, name, settings.vacuum_hours)
    return deleted


def vacuum(spark: SparkSession, table: DeltaTable, name: str, hours: float) -> None:
    """Run Delta VACUUM with a retention of `hours`.

    Delta rejects a retention shorter than the table's deleted-file retention (7 days by
    default), because a reader or writer still using an older version could lose its files.
    The check is turned off only for a window the operator set below that, and restored after.
    """
    if hours >= DELTA_VACUUM_SAFETY_HOURS:
        table.vacuum(hours)
        log.info("vacuumed %s (retention %.1f hours)", name, hours)
        return

    previous = spark.conf.get(RETENTION_CHECK, "true")
    log.warning("vacuuming %s with retention %.1f hours, below Delta's 7-day safety window "
                "(retention.vacuum_hours): readers of older versions may fail", name, hours)
    spark.conf.set(RETENTION_CHECK, "false")
    try:
        table.vacuum(hours)
    finally:
        spark.conf.set(RETENTION_CHECK, previous)


def _latest_version(table: DeltaTable) -> int:
    return int(table.history(1).first()["version"])


def _deleted_rows(table: DeltaTable, version_before: int) -> int:
    """Rows removed by the DELETE just run, from its commit's metrics; 0 if it made no commit."""
    latest = table.history(1).first()
    if int(latest["version"]) == version_before or latest["operation"] != "DELETE":
        return 0
    return int((latest["operationMetrics"] or {}).get("numDeletedRows", 0))
