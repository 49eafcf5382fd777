"""Retention: old events leave the training input, and `maintain` deletes and vacuums them.

A tiny Taobao log spans 2017-12-01 to 2017-12-10. With `retention.days=3` and run date
2017-12-10 the cutoff is 2017-12-07 00:00 UTC.
"""

import datetime as dt

import pytest
from pyspark.sql import functions as F

from behaviorgpt.cli import main
from behaviorgpt.layout import EVENTS_TABLE, QUARANTINE_TABLE, SESSIONS_TABLE, Layout
from behaviorgpt.retention import within_retention
from behaviorgpt.tables import read_table

CUTOFF = dt.datetime(2017, 12, 7, tzinfo=dt.timezone.utc)


def unix(day: int, hour: int, minute: int = 0) -> int:
    return int(dt.datetime(2017, 12, day, hour, minute, tzinfo=dt.timezone.utc).timestamp())


LINES = [
    *(f"1,{100 + day},1,pv,{unix(day, 12)}" for day in range(1, 11)),
    *(f"2,{200 + day},2,pv,{unix(day, 9)}" for day in (2, 8)),
    # One session across the cutoff: 23:50 on the 6th and 00:10 on the 7th.
    f"3,301,3,pv,{unix(6, 23, 50)}",
    f"3,302,3,cart,{unix(7, 0, 10)}",
    "4,401,4,pv",  # cut off: quarantined by the ingest run of 2017-12-01
]


@pytest.fixture(scope="module")
def ingested(spark, tmp_path_factory):
    """Ingest (run date 2017-12-01, so its quarantine rows are old) and sessionize the log."""
    work = tmp_path_factory.mktemp("retention")
    source = work / "log.csv"
    source.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    root = work / "warehouse"
    for stage in ("ingest", "sessionize"):
        assert main([stage, "--root", str(root), "--input", str(source),
                     "--date", "2017-12-01"]) == 0
    return Layout.from_root(root)


def test_sequences_skip_old_events(spark, ingested):
    sessions = read_table(spark, ingested, SESSIONS_TABLE)

    kept = within_retention(sessions, "2017-12-10", 3).select(
        "user_key", F.explode("events.event_time").alias("event_time")).collect()

    assert len(kept) == 6  # user 1: days 7-10, user 2: day 8, user 3: the 00:10 event
    assert all(row["event_time"].astimezone(dt.timezone.utc) >= CUTOFF for row in kept)
    assert within_retention(sessions, "2017-12-10", 0).count() == sessions.count()


@pytest.mark.slow
def test_maintain_deletes_and_vacuums(spark, ingested):
    root = ingested.root
    events_before = read_table(spark, ingested, EVENTS_TABLE)
    new_ids = {row["event_id"] for row in events_before.where(
        F.col("event_date") >= F.lit(CUTOFF.date())).collect()}
    old_folder = ingested.table(EVENTS_TABLE) / "event_date=2017-12-01"
    assert any(old_folder.glob("*.parquet"))
    assert read_table(spark, ingested, QUARANTINE_TABLE).count() == 1

    status = main(["maintain", "--root", str(root), "--date", "2017-12-10",
                   "--set", "retention.days=3", "--set", "retention.vacuum_hours=0"])

    events = read_table(spark, ingested, EVENTS_TABLE)
    sessions = read_table(spark, ingested, SESSIONS_TABLE).collect()
    assert status == 0
    assert {row["event_id"] for row in events.collect()} == new_ids
    assert len(new_ids) == 6
    assert all(row["session_end"].astimezone(dt.timezone.utc) >= CUTOFF for row in sessions)
    # The session across the cutoff stays whole in the table; training drops its old event.
    assert sorted(len(row["events"]) for row in sessions) == [1, 1, 1, 1, 1, 2]
    assert read_table(spark, ingested, QUARANTINE_TABLE).count() == 0
    assert not any(old_folder.glob("*.parquet"))
    assert spark.conf.get("spark.databricks.delta.retentionDurationCheck.enabled") == "true"
    [run] = read_table(spark, ingested, "pipeline_runs").where(
        F.col("command") == "maintain").collect()
    assert run["status"] == "succeeded"
