"""Ingest: parse a raw event log into canonical events, quarantining every row that fails.

The input format is chosen by `ingest.format` (see `formats`). Canonical events (table
`events`, partitioned by `event_date`, documented in docs/tables.md) carry a deterministic
`event_id`, the pseudonymized `user_key`, `item_id`, nullable `category_id`, `event_type` from
`tokens.EVENT_TYPES`, the time as `event_ts` (Unix seconds) and `event_time` (UTC timestamp,
microseconds), `event_date`, an optional numeric `value`, an optional pseudonymized source
`session_key` and an `extras` map of the other source columns.

Every source record read ends up in exactly one place: accepted into `events`, dropped as an
exact duplicate of an accepted record, written to `quarantine` with a reason code, or (only
when `ingest.scope` is `run_date`) left for the run of its own date. The counts are recorded
in `ingest_runs` so that `records_read = accepted + quarantined + duplicates + other_dates`
can be checked.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from behaviorgpt.config import IngestConfig
from behaviorgpt.formats import (MAX_ID_LENGTH, TIME_IN_MILLISECONDS, UNPARSEABLE_TIME,
                                 parse_source, source_spec)
from behaviorgpt.layout import EVENTS_TABLE, QUARANTINE_TABLE, Layout
from behaviorgpt.privacy import pseudonymize_column, redact_raw_line
from behaviorgpt.tables import write_table
from behaviorgpt.tokens import EVENT_TYPES
from behaviorgpt.validation import sql_date

log = logging.getLogger(__name__)

INGEST_RUNS_TABLE = "ingest_runs"

MICROS_PER_SECOND = 1_000_000
MICROS_PER_DAY = 86_400 * MICROS_PER_SECOND

# Reason codes written to the quarantine table, checked in this order.
MALFORMED_ROW = "malformed_row"
MISSING_ID = "missing_id"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
TIME_OUT_OF_RANGE = "time_out_of_range"
USER_DAILY_CAP = "user_daily_cap_exceeded"
REASON_CODES = (MALFORMED_ROW, MISSING_ID, UNKNOWN_EVENT_TYPE, UNPARSEABLE_TIME,
                TIME_IN_MILLISECONDS, TIME_OUT_OF_RANGE, USER_DAILY_CAP)

EVENT_COLUMNS = ("event_id", "user_key", "item_id", "category_id", "event_type", "event_ts",
                 "event_time", "event_date", "value", "session_key", "extras")


@dataclass(frozen=True)
class IngestStats:
    """Record counts of one ingest run.

    `records_read == accepted + quarantined + duplicates + other_dates`, where `other_dates`
    counts valid records of dates other than the run date when `ingest.scope` is `run_date`.
    A record is a line of a delimited file, or one nested event of a JSON line (a JSON line
    that cannot be parsed is one record). Header lines are not records.
    """

    records_read: int
    accepted: int
    quarantined: int
    duplicates: int
    other_dates: int = 0

    @property
    def lines_read(self) -> int:
        return self.records_read


def ingest_events(spark: SparkSession, input_path: str, layout: Layout, *,
                  settings: IngestConfig, key: bytes, run_id: str, run_date: str,
                  now_ts: int | None = None) -> IngestStats:
    """Parse the input log and write `events`, `quarantine` and `ingest_runs`.

    With `settings.scope == "run_date"` only events of `run_date` are written (the date's
    partition is replaced); with `all`, every date present in the input is replaced.
    `now_ts` (Unix seconds, default now) sets the latest plausible event time.
    """
    now_ts = now_ts if now_ts is not None else int(dt.datetime.now(dt.timezone.utc).timestamp())
    spec = source_spec(settings.format, settings.mapping)
    parsed = parse_source(spark, spec, input_path, type_map=settings.event_type_map,
                          drop_columns=settings.drop_columns)

    earliest_us = _unix_seconds(settings.earliest_date) * MICROS_PER_SECOND
    latest_us = int(now_ts + settings.future_tolerance_hours * 3600) * MICROS_PER_SECOND
    classified = classify(parsed, key=key, earliest_us=earliest_us, latest_us=latest_us)
    in_scope = F.lit(True)
    if settings.scope == "run_date":
        in_scope = F.col("reason").isNotNull() | (F.col("event_date") == F.to_date(F.lit(run_date)))
    classified = classified.withColumn("in_scope", in_scope)

    # Several actions read the classified records (counts, events, quarantine): keep them once.
    classified = classified.persist(StorageLevel.MEMORY_AND_DISK)
    valid = classified.where(F.col("reason").isNull() & F.col("in_scope"))
    unique = valid.dropDuplicates(["event_id"])
    unique = cap_user_days(unique, settings.max_events_per_user_day)
    unique = unique.persist(StorageLevel.MEMORY_AND_DISK)

    events = unique.where(F.col("reason").isNull()).select(*EVENT_COLUMNS)
    rejected = classified.where(F.col("reason").isNotNull()).unionByName(
        unique.where(F.col("reason").isNotNull()).select(*classified.columns))
    quarantine = rejected.select("raw_line", "source_file", "reason",
                                 F.lit(run_id).alias("run_id"),
                                 F.to_date(F.lit(run_date)).alias("run_date"))

    stats = _count(classified, unique)
    if settings.scope == "run_date":
        write_table(events, layout, EVENTS_TABLE, partition_by=["event_date"],
                    replace_where=f"event_date = {sql_date(run_date, 'run_date')}")
    else:
        write_table(events, layout, EVENTS_TABLE, partition_by=["event_date"],
                    overwrite_partitions=True)
    write_table(quarantine, layout, QUARANTINE_TABLE, partition_by=["run_date"],
                replace_where=f"run_date = {sql_date(run_date, 'run_date')}")
    _write_stats(spark, layout, stats, input_path=input_path, run_id=run_id, run_date=run_date)

    unique.unpersist()
    classified.unpersist()
    log.info("ingest %s: %d records read, %d accepted, %d quarantined, %d duplicates, "
             "%d of other dates", input_path, stats.records_read, stats.accepted,
             stats.quarantined, stats.duplicates, stats.other_dates)
    return stats


def ingest_taobao(spark: SparkSession, input_path: str, layout: Layout, *, key: bytes,
                  run_id: str, run_date: str, now_ts: int | None = None) -> IngestStats:
    """Ingest a Taobao UserBehavior CSV with the default settings."""
    return ingest_events(spark, input_path, layout, settings=IngestConfig(format="taobao"),
                         key=key, run_id=run_id, run_date=run_date, now_ts=now_ts)


def classify(parsed: DataFrame, *, key: bytes, earliest_us: int, latest_us: int) -> DataFrame:
    """Add the quarantine `reason` (null when valid) and the canonical event columns."""
    bad_id = F.lit(False)
    for name in ("user_id", "item_id", "category_id"):
        value = F.col(name)
        bad_id = bad_id | F.coalesce(value.rlike(r"[\s\uFFFD]")
                                     | (F.length(value) > MAX_ID_LENGTH), F.lit(False))
    time_us = F.col("time_us")

    reason = (F.when(F.col("malformed"), F.lit(MALFORMED_ROW))
              .when(F.col("user_id").isNull() | F.col("item_id").isNull(), F.lit(MISSING_ID))
              .when(bad_id, F.lit(MALFORMED_ROW))
              .when(F.col("event_type").isNull() | ~F.col("event_type").isin(*EVENT_TYPES),
                    F.lit(UNKNOWN_EVENT_TYPE))
              .when(F.col("time_reason").isNotNull(), F.col("time_reason"))
              .when((time_us < earliest_us) | (time_us > latest_us), F.lit(TIME_OUT_OF_RANGE)))

    user_key = pseudonymize_column(F.col("user_id"), key)
    # Exact duplicates share every normalized field, so they share this id. The user enters
    # as its pseudonym: a plain hash of a raw id would be reversible by guessing ids.
    event_id = F.sha2(F.concat_ws(
        "\u001f", user_key, "item_id", F.coalesce("category_id", F.lit("")), "event_type",
        time_us.cast("string"), F.coalesce(F.col("value").cast("string"), F.lit("")),
        F.coalesce("session_key", F.lit(""))), 256)

    # The raw line goes to quarantine only, and never with the raw user or session id.
    raw_line = redact_raw_line(
        F.col("raw_line"), [F.col("user_id"), F.col("session_key")], key=key,
        parsed=~F.col("malformed") | F.col("user_id").isNotNull())
    return parsed.select(
        raw_line.alias("raw_line"), "source_file", reason.alias("reason"),
        event_id.alias("event_id"),
        user_key.alias("user_key"),
        "item_id", "category_id", "event_type",
        F.floor(time_us / MICROS_PER_SECOND).cast("long").alias("event_ts"),
        F.timestamp_micros(time_us).alias("event_time"),
        utc_date(time_us).alias("event_date"),
        "value",
        pseudonymize_column(F.col("session_key"), key).alias("session_key"),
        "extras",
    )


def utc_date(time_us: Column) -> Column:
    """UTC date of a Unix-microseconds column, independent of the Spark session time zone."""
    return F.date_from_unix_date(F.floor(time_us / MICROS_PER_DAY).cast("int"))


def cap_user_days(events: DataFrame, max_events: int) -> DataFrame:
    """Set `reason` to the daily-cap code on every event of a user-day above `max_events`.

    A user-day over the cap is almost always a bot or a replayed log, so the whole day is
    quarantined rather than its first `max_events` events. 0 turns the cap off.
    """
    if max_events <= 0:
        return events
    counts = (events.groupBy("user_key", "event_date").count()
              .where(F.col("count") > max_events)
              .select("user_key", "event_date", F.lit(True).alias("over_cap")))
    marked = events.join(counts, ["user_key", "event_date"], "left")
    return marked.withColumn(
        "reason", F.when(F.col("over_cap"), F.lit(USER_DAILY_CAP)).otherwise(F.col("reason"))
    ).drop("over_cap")


def _unix_seconds(day: str) -> int:
    start = dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), dt.timezone.utc)
    return int(start.timestamp())


def _count(classified: DataFrame, unique: DataFrame) -> IngestStats:
    totals = classified.agg(
        F.count(F.lit(1)).alias("read"),
        F.count("reason").alias("rejected"),
        F.count(F.when(F.col("reason").isNull() & F.col("in_scope"), 1)).alias("valid"),
        F.count(F.when(F.col("reason").isNull() & ~F.col("in_scope"), 1)).alias("other_dates"),
    ).first()
    kept = unique.agg(F.count(F.lit(1)).alias("unique"),
                      F.count("reason").alias("capped")).first()
    return IngestStats(
        records_read=totals["read"],
        accepted=kept["unique"] - kept["capped"],
        quarantined=totals["rejected"] + kept["capped"],
        duplicates=totals["valid"] - kept["unique"],
        other_dates=totals["other_dates"],
    )


def _write_stats(spark: SparkSession, layout: Layout, stats: IngestStats, *, input_path: str,
                 run_id: str, run_date: str) -> None:
    frame = spark.createDataFrame(
        [(run_id, input_path, stats.records_read, stats.accepted, stats.quarantined,
          stats.duplicates, stats.other_dates)],
        "run_id string, source string, lines_read long, accepted long, quarantined long, "
        "duplicates long, other_dates long",
    ).withColumn("run_date", F.to_date(F.lit(run_date)))
    write_table(frame, layout, INGEST_RUNS_TABLE,
                replace_where=f"run_date = {sql_date(run_date, 'run_date')}")
