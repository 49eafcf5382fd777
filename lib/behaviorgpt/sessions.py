"""Sessionize: group each user's events into sessions split by an inactivity gap.

Table `sessions` (partitioned by `session_date`, the UTC date of the session start) has one row
per session: `user_key`, `session_id` (SHA-256 of the user key and the first event id, so it is
stable across reruns), `session_start` and `session_end` (timestamps), `event_count`, and
`events`, the session's events in time order as an array of structs.

Events with the same timestamp are ordered by `event_id`, so the order, and therefore every
session id, does not depend on how Spark partitioned the input.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

SESSIONS_PARTITION = "session_date"

EVENT_FIELDS = ["event_ts", "event_id", "item_id", "category_id", "event_type"]
"""Fields of each element of `sessions.events`, in sort order (time first, then id)."""


def sessionize(events: DataFrame, *, gap_seconds: float) -> DataFrame:
    """Return one row per session from canonical events.

    A session ends when the next event of the same user comes more than `gap_seconds` later.
    """
    by_user_in_time = Window.partitionBy("user_key").orderBy("event_ts", "event_id")

    gap = F.col("event_ts") - F.lag("event_ts").over(by_user_in_time)
    starts_session = F.when(gap.isNull() | (gap > gap_seconds), 1).otherwise(0)
    marked = events.withColumn("starts_session", starts_session)
    numbered = marked.withColumn(
        "session_number",
        F.sum("starts_session").over(by_user_in_time.rowsBetween(Window.unboundedPreceding, 0)))

    sessions = numbered.groupBy("user_key", "session_number").agg(
        F.array_sort(F.collect_list(F.struct(*EVENT_FIELDS))).alias("events"))

    first_event = F.element_at("events", 1)
    last_event = F.element_at("events", -1)
    start = F.timestamp_seconds(first_event["event_ts"])
    return sessions.select(
        "user_key",
        F.sha2(F.concat_ws("\u001f", "user_key", first_event["event_id"]), 256).alias("session_id"),
        start.alias("session_start"),
        F.timestamp_seconds(last_event["event_ts"]).alias("session_end"),
        F.size("events").alias("event_count"),
        "events",
        F.to_date(start).alias(SESSIONS_PARTITION),
    )
