"""Time zones: neither the machine's TZ nor Spark's session time zone moves any boundary."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from behaviorgpt.events import classify
from behaviorgpt.formats import parse_source, source_spec
from behaviorgpt.sessions import sessionize

REPO_ROOT = Path(__file__).resolve().parents[1]

# Events around midnight UTC (2017-11-26 00:00 is 1511654400), where a zone shift would
# move dates and, through them, partitions.
LINES = ["1,10,100,pv,1511654000", "1,11,100,pv,1511654399", "1,12,100,pv,1511654400",
         "1,13,100,pv,1511658500", "2,10,100,buy,1511650000"]

SUMMARY_SCRIPT = """
import json, sys
from behaviorgpt.config import load_config
from behaviorgpt.spark import build_spark_session
sys.path.insert(0, {tests!r})
from test_timezone import summarize
spark = build_spark_session(load_config("local", ["spark.shuffle_partitions=2",
    "spark.extra={{'spark.ui.enabled': 'false'}}"]))
print("SUMMARY " + json.dumps(summarize(spark, {source!r})))
spark.stop()
"""


def summarize(spark, source):
    """Session boundaries and dates of `source`, as plain values independent of any zone."""
    parsed = parse_source(spark, source_spec("taobao"), source, type_map={}, drop_columns=[])
    events = classify(parsed, key=b"k", earliest_us=0, latest_us=2**62)
    sessions = sessionize(events.where("reason IS NULL"), gap_seconds=1800)
    rows = sessions.selectExpr("session_id", "unix_micros(session_start) AS start_us",
                               "unix_micros(session_end) AS end_us",
                               "CAST(session_date AS STRING) AS session_date", "event_count",
                               "transform(events, e -> e.event_id) AS event_ids").collect()
    dates = events.selectExpr("event_id", "CAST(event_date AS STRING) AS day").collect()
    return {"sessions": sorted([list(row) for row in rows]),
            "event_dates": sorted([list(row) for row in dates])}


@pytest.fixture()
def source(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("\n".join(LINES) + "\n", encoding="ascii")
    return str(path)


def test_spark_session_time_zone(spark, source):
    expected = summarize(spark, source)

    previous = spark.conf.get("spark.sql.session.timeZone")
    try:
        for zone in ("Pacific/Kiritimati", "America/Los_Angeles"):
            spark.conf.set("spark.sql.session.timeZone", zone)
            assert summarize(spark, source) == expected, zone
    finally:
        spark.conf.set("spark.sql.session.timeZone", previous)

    assert sorted(row[3] for row in expected["sessions"]) == [
        "2017-11-25", "2017-11-25", "2017-11-26"]
    assert sorted({row[1] for row in expected["event_dates"]}) == ["2017-11-25", "2017-11-26"]


@pytest.mark.slow
def test_process_time_zone(spark, source):
    expected = summarize(spark, source)
    environment = dict(os.environ, TZ="Asia/Kolkata",
                       PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "lib"),
                                                   os.environ.get("PYTHONPATH", "")]))
    script = SUMMARY_SCRIPT.format(tests=str(REPO_ROOT / "tests"), source=source)

    result = subprocess.run([sys.executable, "-c", script], env=environment,
                            capture_output=True, text=True, timeout=600, check=True)

    line = next(line for line in result.stdout.splitlines() if line.startswith("SUMMARY "))
    assert json.loads(line[len("SUMMARY "):]) == json.loads(json.dumps(expected))
