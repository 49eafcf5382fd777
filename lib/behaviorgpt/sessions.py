"""Sessionize: group each user's events into sessions, in one run or one day at a time.

Table `sessions` (partitioned by `session_date`, the UTC date of the session start; columns in
docs/tables.md) has one row per session with the session's events, time-ordered, as an array
of structs.

Rules, applied per user:

1. A *chain* is a run of events with no inactivity gap longer than `gap_seconds` between
   neighbours. With source sessions, events that carry a `session_key` form one chain per key
   instead.
2. A chain is cut into fixed windows of `max_duration_seconds` counted from its first event,
   and each window into pieces of at most `max_events` events. Each piece is a session, so a
   long chain is split, never dropped. Both limits depend only on the chain's start, which is
   what lets a day-by-day run produce the same sessions as one run over all days.

Events with the same time are ordered by `event_id`, so the order, and therefore every
session id, does not depend on how Spark partitioned the input. All arithmetic is on Unix
microseconds, so neither the machine's time zone nor Spark's session time zone matters.
"""

from __future__ import annotations

import datetime as dt
import logging

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from behaviorgpt.layout import EVENTS_TABLE, SESSIONS_TABLE, Layout
from behaviorgpt.tables import read_table, table_exists, write_table

log = logging.getLogger(__name__)

SESSIONS_PARTITION = "session_date"

EVENT_FIELDS = ["event_ts", "event_time", "event_id", "item_id", "category_id", "event_type",
                "value"]
"""Fields of each element of `sessions.events`, in sort order (time first, then id)."""

MICROS_PER_SECOND = 1_000_000
MICROS_PER_DAY = 86_400 * MICROS_PER_SECOND


def sessionize(events: DataFrame, *, gap_seconds: float, max_duration_seconds: float = 0,
               max_events: int = 0, use_source_sessions: bool = False) -> DataFrame:
    """Return one row per session from canonical events (rules in the module docstring).

    `max_duration_seconds` or `max_events` of 0 turn that limit off.
    """
    events = _with_optional_columns(events)
    time_us = F.unix_micros("event_time")

    # Every window below shares one partitioning and order, so Spark sorts the data once.
    if use_source_sessions:
        chain_group = F.coalesce("session_key", F.lit(""))
        by_chain_group = ["user_key", "chain_group"]
    else:
        chain_group = F.lit("")
        by_chain_group = ["user_key"]
    in_time = Window.partitionBy(*by_chain_group).orderBy("event_time", "event_id")
    so_far = in_time.rowsBetween(Window.unboundedPreceding, Window.currentRow)

    marked = events.withColumn("chain_group", chain_group).withColumn("time_us", time_us)
    gap_us = F.col("time_us") - F.lag("time_us").over(in_time)
    keyed = F.col("chain_group") != "" if use_source_sessions else F.lit(False)
    starts_chain = gap_us.isNull() | (~keyed & (gap_us > gap_seconds * MICROS_PER_SECOND))
    marked = marked.withColumn("starts_chain", starts_chain)

    # Times only grow within a partition, so the running max of chain-start times is the
    # start of the current chain.
    marked = (marked
              .withColumn("chain_start_us",
                          F.max(F.when(F.col("starts_chain"), F.col("time_us"))).over(so_far))
              .withColumn("row", F.row_number().over(in_time)))

    window_index = F.lit(0)
    if max_duration_seconds > 0:
        window_index = F.floor((F.col("time_us") - F.col("chain_start_us"))
                               / int(max_duration_seconds * MICROS_PER_SECOND))
    marked = marked.withColumn("window_index", window_index)
    starts_window = F.col("starts_chain") | (
        F.col("window_index") != F.lag("window_index").over(in_time))
    marked = marked.withColumn(
        "window_first_row", F.max(F.when(starts_window, F.col("row"))).over(so_far))

    piece = F.lit(0)
    if max_events > 0:
        piece = F.floor((F.col("row") - F.col("window_first_row")) / max_events)
    marked = marked.withColumn("piece", piece)

    sessions = marked.groupBy(*by_chain_group, "chain_start_us", "window_index", "piece").agg(
        F.array_sort(F.collect_list(F.struct(*EVENT_FIELDS))).alias("events"))
    return _session_columns(sessions)


def _with_optional_columns(events: DataFrame) -> DataFrame:
    """Add `event_time`, `value` and `session_key` where an older events table lacks them."""
    if "event_time" not in events.columns:
        events = events.withColumn("event_time", F.timestamp_seconds("event_ts"))
    if "value" not in events.columns:
        events = events.withColumn("value", F.lit(None).cast("double"))
    if "session_key" not in events.columns:
        events = events.withColumn("session_key", F.lit(None).cast("string"))
    return events


def _session_columns(sessions: DataFrame) -> DataFrame:
    first_event = F.element_at("events", 1)
    last_event = F.element_at("events", -1)
    start = first_event["event_time"]
    return sessions.select(
        "user_key",
        F.sha2(F.concat_ws("\u001f", "user_key", first_event["event_id"]), 256).alias("session_id"),
        start.alias("session_start"),
        last_event["event_time"].alias("session_end"),
        F.size("events").cast("long").alias("event_count"),
        "events",
        F.timestamp_micros("chain_start_us").alias("chain_start"),
        _utc_date(F.unix_micros(start)).alias(SESSIONS_PARTITION),
    )


def _utc_date(time_us: Column) -> Column:
    return F.date_from_unix_date(F.floor(time_us / MICROS_PER_DAY).cast("int"))


def sessionize_day(spark: SparkSession, layout: Layout, run_date: str, *, gap_seconds: float,
                   max_duration_seconds: float = 0, max_events: int = 0,
                   use_source_sessions: bool = False) -> None:
    """Sessionize the events of `run_date` into `sessions`, continuing open sessions.

    A chain of the previous days whose last session ended less than `gap_seconds` before
    midnight is still open: its events are read back from `events` and sessionized together
    with the day's events, so a session that crosses midnight is the same one it would be in a
    single run over both days. The result is merged by `session_id`: sessions of the run date
    are replaced, continued sessions of earlier dates updated, so a rerun of the same date
    gives the same table.

    NOTE: dates must be run in order. Rerunning an earlier date after a later one cuts the
    sessions that the later run continued back to their state at the end of the earlier date.
    With source sessions, only keyed sessions within `gap_seconds` of midnight are continued.
    """
    day = dt.date.fromisoformat(run_date)
    day_start_us = int(dt.datetime.combine(day, dt.time(), dt.timezone.utc).timestamp()) \
        * MICROS_PER_SECOND
    events = read_table(spark, layout, EVENTS_TABLE)
    day_events = events.where(F.col("event_date") == F.lit(day))

    if table_exists(layout, SESSIONS_TABLE):
        open_since = F.timestamp_micros(F.lit(day_start_us - int(gap_seconds * MICROS_PER_SECOND)))
        open_chains = (read_table(spark, layout, SESSIONS_TABLE)
                       .where((F.col(SESSIONS_PARTITION) < F.lit(day))
                              & (F.col("session_end") >= open_since))
                       .select("user_key", F.col("chain_start").alias("open_chain_start"))
                       .distinct())
        earliest = open_chains.agg(F.min("open_chain_start")).first()[0]
        if earliest is not None:
            # Only the dates the open chains span are read; the bound is one scalar.
            first_date = _utc_date(F.unix_micros(F.lit(earliest)))
            earlier = events.where((F.col("event_date") >= first_date)
                                   & (F.col("event_date") < F.lit(day)))
            chain_events = (earlier.join(open_chains, "user_key")
                            .where(F.col("event_time") >= F.col("open_chain_start"))
                            .drop("open_chain_start"))
            day_events = day_events.unionByName(chain_events)

    sessions = sessionize(day_events, gap_seconds=gap_seconds,
                          max_duration_seconds=max_duration_seconds, max_events=max_events,
                          use_source_sessions=use_source_sessions)
    merge_sessions(spark, layout, sessions, run_date)


def merge_sessions(spark: SparkSession, layout: Layout, sessions: DataFrame,
                   run_date: str) -> None:
    """Upsert `sessions` by `session_id`; delete sessions of `run_date` that are gone."""
    if not table_exists(layout, SESSIONS_TABLE):
        write_table(sessions, layout, SESSIONS_TABLE, partition_by=[SESSIONS_PARTITION])
        return

    from delta.tables import DeltaTable

    target = DeltaTable.forPath(spark, str(layout.table(SESSIONS_TABLE)))
    (target.alias("target")
     .merge(sessions.alias("source"),
            "target.session_id = source.session_id "
            "AND target.session_date = source.session_date")
     .whenMatchedUpdateAll()
     .whenNotMatchedInsertAll()
     .whenNotMatchedBySourceDelete(condition=F.col("target.session_date") == F.lit(
         dt.date.fromisoformat(run_date)))
     .execute())
    log.info("merged the sessions of %s into %s", run_date, layout.table(SESSIONS_TABLE))
