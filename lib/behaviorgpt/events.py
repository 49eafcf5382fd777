"""Ingest: parse a raw event log into canonical events, quarantining every row that fails.

Canonical events (table `events`, partitioned by `event_date`):

| column | type | meaning |
|---|---|---|
| event_id | string | SHA-256 of the normalized source fields; equal for exact duplicates |
| user_key | string | HMAC-SHA256 of the source user id (see `privacy`) |
| item_id, category_id | string | source ids; `category_id` may be null |
| event_type | string | one of `tokens.EVENT_TYPES` |
| event_ts | long | event time in Unix seconds (UTC) |
| event_time | timestamp | the same instant as a timestamp |
| event_date | date | UTC date of the event |

Every line read ends up in exactly one place: accepted into `events`, dropped as an exact
duplicate of an accepted line, or written to `quarantine` with a reason code. The counts are
recorded in `ingest_runs` so that lines read = accepted + quarantined + duplicates can be checked.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from behaviorgpt.layout import EVENTS_TABLE, QUARANTINE_TABLE, Layout
from behaviorgpt.privacy import pseudonymize_column
from behaviorgpt.tables import write_table

log = logging.getLogger(__name__)

INGEST_RUNS_TABLE = "ingest_runs"

TAOBAO_EVENT_TYPES = {"pv": "view", "cart": "cart", "fav": "fav", "buy": "purchase"}
"""Taobao `behavior_type` values and the canonical event types they map to."""

EARLIEST_PLAUSIBLE_TS = int(dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc).timestamp())
FUTURE_TOLERANCE_SECONDS = 24 * 3600
"""Events more than a day after the ingest run started are treated as clock errors."""

# Reason codes written to the quarantine table, checked in this order.
MALFORMED_ROW = "malformed_row"
MISSING_ID = "missing_id"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
UNPARSEABLE_TIME = "unparseable_time"
TIME_IN_MILLISECONDS = "time_in_milliseconds"
TIME_OUT_OF_RANGE = "time_out_of_range"


@dataclass(frozen=True)
class IngestStats:
    """Row counts of one ingest run; `lines_read == accepted + quarantined + duplicates`."""

    lines_read: int
    accepted: int
    quarantined: int
    duplicates: int


def ingest_taobao(spark: SparkSession, input_path: str, layout: Layout, *, key: bytes,
                  run_id: str, run_date: str, now_ts: int | None = None) -> IngestStats:
    """Parse a Taobao UserBehavior CSV and write `events`, `quarantine` and `ingest_runs`.

    `input_path` is a file or folder of CSV files without header:
    `user_id,item_id,category_id,behavior_type,timestamp` with the timestamp in Unix seconds.
    """
    now_ts = now_ts if now_ts is not None else int(dt.datetime.now(dt.timezone.utc).timestamp())

    lines = (spark.read.text(input_path)
             .select(F.col("value").alias("raw_line"),
                     F.col("_metadata.file_path").alias("source_file")))
    classified = classify_taobao_lines(lines, now_ts=now_ts)

    # Three actions read the classified rows (counts, events, quarantine): keep them once.
    classified = classified.persist(StorageLevel.MEMORY_AND_DISK)

    accepted = classified.where(F.col("reason").isNull())
    events = to_canonical_events(accepted, key=key).dropDuplicates(["event_id"])
    quarantine = (classified.where(F.col("reason").isNotNull())
                  .select("raw_line", "source_file", "reason",
                          F.lit(run_id).alias("run_id"),
                          F.to_date(F.lit(run_date)).alias("run_date")))

    stats = _count(classified)

    write_table(events, layout, EVENTS_TABLE, partition_by=["event_date"],
                overwrite_partitions=True)
    write_table(quarantine, layout, QUARANTINE_TABLE, partition_by=["run_date"],
                replace_where=f"run_date = DATE'{run_date}'")
    _write_stats(spark, layout, stats, input_path=input_path, run_id=run_id, run_date=run_date)

    classified.unpersist()
    log.info("ingest %s: %d lines read, %d accepted, %d quarantined, %d duplicates",
             input_path, stats.lines_read, stats.accepted, stats.quarantined, stats.duplicates)
    return stats


def classify_taobao_lines(lines: DataFrame, *, now_ts: int) -> DataFrame:
    """Split raw Taobao lines into typed fields and a `reason` column (null when valid).

    Input columns: `raw_line`, `source_file`. Output adds `user_id`, `item_id`, `category_id`,
    `event_type`, `event_ts` (Unix seconds) and `reason`.
    """
    # A CRLF file leaves "\r" at the end of each line; fields are trimmed of spaces too.
    fields = F.split(F.regexp_replace("raw_line", r"\r$", ""), ",", -1)
    field_count = F.size(fields)

    def field(index: int) -> Column:
        value = F.trim(F.try_element_at(fields, F.lit(index + 1)))
        return F.when(value == "", None).otherwise(value)

    behaviour = field(3)
    raw_ts = field(4)
    ts = F.when(raw_ts.rlike(r"^-?[0-9]{1,18}$"), raw_ts.cast("long"))
    event_type = F.element_at(F.create_map(*[F.lit(x) for pair in TAOBAO_EVENT_TYPES.items()
                                             for x in pair]), behaviour)
    latest_ts = now_ts + FUTURE_TOLERANCE_SECONDS

    reason = (F.when(field_count != 5, F.lit(MALFORMED_ROW))
              .when(field(0).isNull() | field(1).isNull(), F.lit(MISSING_ID))
              .when(field(0).rlike(r"\s") | field(1).rlike(r"\s"), F.lit(MALFORMED_ROW))
              .when(event_type.isNull(), F.lit(UNKNOWN_EVENT_TYPE))
              .when(ts.isNull(), F.lit(UNPARSEABLE_TIME))
              .when((ts / 1000 >= EARLIEST_PLAUSIBLE_TS) & (ts / 1000 <= latest_ts),
                    F.lit(TIME_IN_MILLISECONDS))
              .when((ts < EARLIEST_PLAUSIBLE_TS) | (ts > latest_ts), F.lit(TIME_OUT_OF_RANGE)))

    return lines.select(
        "raw_line", "source_file",
        field(0).alias("user_id"),
        field(1).alias("item_id"),
        field(2).alias("category_id"),
        event_type.alias("event_type"),
        ts.alias("event_ts"),
        reason.alias("reason"),
    )


def to_canonical_events(accepted: DataFrame, *, key: bytes) -> DataFrame:
    """Turn valid classified rows into the canonical event columns, user ids pseudonymized."""
    event_id = F.sha2(F.concat_ws("\u001f", "user_id", "item_id",
                                  F.coalesce("category_id", F.lit("")), "event_type",
                                  F.col("event_ts").cast("string")), 256)
    event_time = F.timestamp_seconds("event_ts")
    return accepted.select(
        event_id.alias("event_id"),
        pseudonymize_column(F.col("user_id"), key).alias("user_key"),
        "item_id",
        "category_id",
        "event_type",
        "event_ts",
        event_time.alias("event_time"),
        F.to_date(event_time).alias("event_date"),
    )


def _count(classified: DataFrame) -> IngestStats:
    row = classified.agg(
        F.count(F.lit(1)).alias("lines_read"),
        F.count("reason").alias("quarantined"),
        F.count_distinct(F.when(F.col("reason").isNull(), F.concat_ws(
            "\u001f", "user_id", "item_id", F.coalesce("category_id", F.lit("")), "event_type",
            F.col("event_ts").cast("string")))).alias("accepted"),
    ).first()
    duplicates = row["lines_read"] - row["quarantined"] - row["accepted"]
    return IngestStats(lines_read=row["lines_read"], accepted=row["accepted"],
                       quarantined=row["quarantined"], duplicates=duplicates)


def _write_stats(spark: SparkSession, layout: Layout, stats: IngestStats, *, input_path: str,
                 run_id: str, run_date: str) -> None:
    frame = spark.createDataFrame(
        [(run_id, input_path, stats.lines_read, stats.accepted, stats.quarantined,
          stats.duplicates)],
        "run_id string, source string, lines_read long, accepted long, quarantined long, "
        "duplicates long",
    ).withColumn("run_date", F.to_date(F.lit(run_date)))
    write_table(frame, layout, INGEST_RUNS_TABLE, replace_where=f"run_date = DATE'{run_date}'")
