"""Sessionization: gaps, splits, ties, source keys and heavy users."""

import pytest
from pyspark.sql import functions as F

from behaviorgpt.sessions import sessionize

GAP = 30 * 60
BASE = 1_511_658_000


def make_events(spark, rows, session_keys=None):
    session_keys = session_keys or [None] * len(rows)
    return spark.createDataFrame(
        [(f"e{index:03d}", user, f"i{index}", "c", "view", ts, key) for index, ((user, ts), key)
         in enumerate(zip(rows, session_keys))],
        "event_id string, user_key string, item_id string, category_id string, "
        "event_type string, event_ts long, session_key string")


def test_gap_splits_sessions(spark):
    events = make_events(spark, [
        ("u1", BASE), ("u1", BASE + 60), ("u1", BASE + 60 + GAP),  # exactly the gap: same session
        ("u1", BASE + 61 + 2 * GAP),  # one second more than the gap: new session
        ("u2", BASE),
    ])

    sessions = sessionize(events, gap_seconds=GAP).orderBy("user_key", "session_start").collect()

    assert [(row["user_key"], row["event_count"]) for row in sessions] == [
        ("u1", 3), ("u1", 1), ("u2", 1)]
    first = sessions[0]
    assert [event["event_ts"] for event in first["events"]] == [BASE, BASE + 60, BASE + 60 + GAP]
    assert first["session_end"].timestamp() - first["session_start"].timestamp() == 60 + GAP


def test_ties_and_ids_are_deterministic(spark):
    events = make_events(spark, [("u1", BASE)] * 3)

    first = sessionize(events, gap_seconds=GAP).collect()
    second = sessionize(events.repartition(3), gap_seconds=GAP).collect()

    assert len(first) == 1
    assert [event["event_id"] for event in first[0]["events"]] == ["e000", "e001", "e002"]
    assert first[0]["session_id"] == second[0]["session_id"]


def test_max_events_splits(spark):
    events = make_events(spark, [("u1", BASE + minute * 60) for minute in range(7)])

    sessions = sessionize(events, gap_seconds=GAP, max_events=3).orderBy("session_start").collect()

    assert [row["event_count"] for row in sessions] == [3, 3, 1]
    assert sum(row["event_count"] for row in sessions) == 7
    assert {row["chain_start"] for row in sessions} == {sessions[0]["session_start"]}


def test_max_duration_splits(spark):
    # One event every 20 minutes for 3 hours: no gap, but 1-hour windows from the first event.
    events = make_events(spark, [("u1", BASE + step * 1200) for step in range(10)])

    sessions = (sessionize(events, gap_seconds=GAP, max_duration_seconds=3600, max_events=2)
                .orderBy("session_start").collect())

    counts = [row["event_count"] for row in sessions]
    assert counts == [2, 1, 2, 1, 2, 1, 1]
    assert all(row["session_end"].timestamp() - row["session_start"].timestamp() < 3600
               for row in sessions)


def test_source_session_keys(spark):
    # Two interleaved source sessions, and a keyless event an hour later.
    events = make_events(
        spark, [("u1", BASE), ("u1", BASE + 10), ("u1", BASE + 20), ("u1", BASE + 3 * GAP),
                ("u1", BASE + 7200)],
        session_keys=["a", "b", "a", "a", None])

    sessions = sessionize(events, gap_seconds=GAP, use_source_sessions=True).collect()

    by_first = {row["events"][0]["event_id"]: row["event_count"] for row in sessions}
    assert by_first == {"e000": 3, "e001": 1, "e004": 1}


@pytest.mark.slow
def test_heavy_user_memory(spark):
    # A bot with 300,000 events one second apart: one chain of 3.5 days, split by the limits.
    heavy = (spark.range(300_000)
             .select(F.format_string("e%09d", "id").alias("event_id"),
                     F.lit("bot").alias("user_key"),
                     (F.col("id") % 1000).cast("string").alias("item_id"),
                     F.lit("c").alias("category_id"), F.lit("view").alias("event_type"),
                     (F.lit(BASE) + F.col("id")).alias("event_ts")))

    sessions = sessionize(heavy, gap_seconds=GAP, max_duration_seconds=12 * 3600,
                          max_events=1000)
    summary = sessions.agg(F.count(F.lit(1)).alias("sessions"),
                           F.sum("event_count").alias("events"),
                           F.max("event_count").alias("largest")).first()

    assert summary["events"] == 300_000
    assert summary["largest"] == 1000
    # Six full 12-hour windows of 43,200 events (44 pieces each), then 40,800 events (41).
    assert summary["sessions"] == 6 * 44 + 41
