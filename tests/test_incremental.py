"""Incremental runs: one date at a time gives the same sessions as one run over all dates,
sessions continue across midnight, and a rerun of a date changes nothing."""


import pytest
from pyspark.sql import functions as F

from behaviorgpt.cli import main
from behaviorgpt.config import GeneratorConfig
from behaviorgpt.generator import generate_event_log
from behaviorgpt.layout import EVENTS_TABLE, SESSIONS_TABLE, Layout
from behaviorgpt.tables import read_table

from conftest import real_data_file

# A long gap and small limits make many sessions cross midnight and split.
SESSION_SETTINGS = ["session.gap_minutes=180", "session.max_duration_minutes=240",
                    "session.max_events=25"]
COMPARED = ["session_id", "user_key", "session_start", "session_end", "event_count",
            "chain_start", "session_date", "events"]


def run_stages(root, source, run_date, *settings):
    for stage in ("ingest", "sessionize"):
        status = main([stage, "--root", str(root), "--input", str(source), "--date", run_date,
                       *[item for setting in settings for item in ("--set", setting)]])
        assert status == 0
    return Layout.from_root(root)


def assert_same_rows(left, right):
    assert left.count() == right.count()
    assert left.exceptAll(right).count() == 0
    assert right.exceptAll(left).count() == 0


def sessions_of(spark, layout):
    return read_table(spark, layout, SESSIONS_TABLE).select(*COMPARED)


@pytest.fixture(scope="module")
def generated_log(tmp_path_factory):
    config = GeneratorConfig(users=150, items=2000, categories=40, days=3,
                             start_date="2017-11-25", mean_events_per_user=40)
    return generate_event_log(tmp_path_factory.mktemp("generated"), config).events_path


@pytest.mark.slow
def test_days_equal_one_run(spark, tmp_path, generated_log):
    whole = run_stages(tmp_path / "whole", generated_log, "2017-11-27", *SESSION_SETTINGS)
    # Every date of the log, including a day that late sessions spill into: a handful of rows.
    days = [str(row["event_date"]) for row in read_table(spark, whole, EVENTS_TABLE)
            .select("event_date").distinct().orderBy("event_date").collect()]
    daily = None
    for day in days:
        daily = run_stages(tmp_path / "daily", generated_log, day, *SESSION_SETTINGS,
                           "ingest.scope=run_date")

    expected = sessions_of(spark, whole)
    actual = sessions_of(spark, daily)
    crossing = actual.where(F.to_date("session_end") > F.col("session_date")).count()

    assert crossing > 0  # the test exercises stitching across midnight
    assert_same_rows(actual, expected)


@pytest.mark.slow
def test_rerun_day_is_idempotent(spark, tmp_path, generated_log):
    for day in ("2017-11-25", "2017-11-26"):
        layout = run_stages(tmp_path, generated_log, day, *SESSION_SETTINGS,
                            "ingest.scope=run_date")
    before = sessions_of(spark, layout).localCheckpoint()
    events_before = read_table(spark, layout, EVENTS_TABLE).localCheckpoint()

    run_stages(tmp_path, generated_log, "2017-11-26", *SESSION_SETTINGS, "ingest.scope=run_date")

    assert_same_rows(sessions_of(spark, layout), before)
    assert_same_rows(read_table(spark, layout, EVENTS_TABLE), events_before)


@pytest.mark.slow
def test_taobao_time_sorted_day(spark, tmp_path):
    source = real_data_file(
        "taobao_userbehavior/time_sorted_prefix_jason-wang1-UserBehaviorAnalysis/UserBehavior.csv")

    whole = run_stages(tmp_path / "whole", source, "2017-11-26")
    daily = run_stages(tmp_path / "daily", source, "2017-11-26", "ingest.scope=run_date")
    first = sessions_of(spark, daily).localCheckpoint()
    run_stages(tmp_path / "daily", source, "2017-11-26", "ingest.scope=run_date")

    assert_same_rows(sessions_of(spark, daily), first)
    assert_same_rows(first, sessions_of(spark, whole))
    assert first.agg(F.sum("event_count")).first()[0] == 110_300
