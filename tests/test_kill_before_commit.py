"""A Spark write killed between its data files and its Delta commit leaves no trace for readers.

The ingest job of day 2 runs in a child process (`slow_commit_child.py`) whose `events` write
is slowed after its first task, a test-only fault hook. The test polls the table folder and
sends SIGKILL to the child's whole process group (Python driver, JVM and Python workers) once
a new data file exists but no new commit does. Readers must still see the previous version,
and a rerun of day 2 must reconcile with no duplicates.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from behaviorgpt.cli import main
from behaviorgpt.layout import EVENTS_TABLE, Layout
from behaviorgpt.tables import read_table, table_version

USERS = 40
DAY_1, DAY_2 = "2017-12-01", "2017-12-02"
WINDOW_TIMEOUT_SECONDS = 300
# The child must split its shuffle over two tasks, so adaptive coalescing is turned off.
CHILD_SETTINGS = [
    "--set", "ingest.scope=run_date",
    "--set", "spark.shuffle_partitions=2",
    "--set", "spark.driver_memory=1g",
    "--set", "spark.extra={'spark.ui.enabled': 'false', "
             "'spark.sql.adaptive.coalescePartitions.enabled': 'false'}",
]


def write_log(path: Path) -> None:
    lines = []
    for day, hour in ((1, 10), (2, 11)):
        start = int(dt.datetime(2017, 12, day, hour, tzinfo=dt.timezone.utc).timestamp())
        for user in range(1, USERS + 1):
            lines.append(f"{user},{1000 + user},{user % 7},pv,{start + user}")
            lines.append(f"{user},{2000 + user},{user % 7},cart,{start + user + 60}")
    lines.append(f"1,1001,1,pv,{start + 1}")  # a duplicate of a day-2 event
    lines.append("99,3001,1,pv")  # cut off: quarantined by every run
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def data_files(table: Path) -> set[Path]:
    return {path for path in table.rglob("*.parquet") if "_delta_log" not in path.parts}


def commits(table: Path) -> set[Path]:
    return set((table / "_delta_log").glob("*.json"))


def kill_in_commit_window(command: list[str], table: Path, log_path: Path) -> None:
    """Run `command` in its own process group; SIGKILL it once a new data file exists but no
    new commit does. Fail if the commit happens first or the window never opens."""
    files_before, commits_before = data_files(table), commits(table)
    with open(log_path, "wb") as log:
        child = subprocess.Popen(command, start_new_session=True, stdout=log, stderr=log)
    deadline = time.monotonic() + WINDOW_TIMEOUT_SECONDS
    try:
        while time.monotonic() < deadline:
            assert commits(table) == commits_before, "the commit happened before the kill"
            if child.poll() is not None:
                output = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"child exited with {child.returncode} before the window: {output}")
            if data_files(table) - files_before:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(timeout=60)
                return
            time.sleep(0.1)
        pytest.fail(f"no new data file in {table} within {WINDOW_TIMEOUT_SECONDS} s")
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=60)


@pytest.mark.slow
def test_kill_before_commit(spark, tmp_path):
    source = tmp_path / "log.csv"
    write_log(source)
    layout = Layout.from_root(tmp_path / "warehouse")
    arguments = ["--root", str(layout.root), "--input", str(source), *CHILD_SETTINGS]
    assert main(["ingest", "--date", DAY_1, *arguments]) == 0
    table = layout.table(EVENTS_TABLE)
    version_before = table_version(spark, layout, EVENTS_TABLE)
    rows_before = sorted(row["event_id"] for row in read_table(spark, layout, EVENTS_TABLE)
                         .select("event_id").collect())

    child = Path(__file__).with_name("slow_commit_child.py")
    kill_in_commit_window([sys.executable, str(child), "--date", DAY_2, *arguments], table,
                          tmp_path / "child.log")

    orphans = data_files(table)
    events = read_table(spark, layout, EVENTS_TABLE)
    assert table_version(spark, layout, EVENTS_TABLE) == version_before
    assert any("event_date=2017-12-02" in str(path) for path in orphans)
    assert sorted(row["event_id"] for row in events.select("event_id").collect()) == rows_before
    assert events.where(F.col("event_date") == F.lit(dt.date(2017, 12, 2))).count() == 0

    assert main(["ingest", "--date", DAY_2, *arguments]) == 0

    events = read_table(spark, layout, EVENTS_TABLE)
    day_2 = events.where(F.col("event_date") == F.lit(dt.date(2017, 12, 2)))
    [stats] = read_table(spark, layout, "ingest_runs").where(
        F.col("run_date") == F.lit(dt.date(2017, 12, 2))).collect()
    assert stats["accepted"] == 2 * USERS
    assert stats["duplicates"] == 1
    assert stats["quarantined"] == 1
    assert stats["lines_read"] == (stats["accepted"] + stats["quarantined"]
                                   + stats["duplicates"] + stats["other_dates"])
    assert day_2.count() == 2 * USERS
    assert events.count() == 4 * USERS
    assert events.select("event_id").distinct().count() == 4 * USERS
