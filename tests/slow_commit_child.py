"""Child process of test_kill_before_commit: `behaviorgpt ingest` with a slow events write.

Test-only fault injection, never imported by the package: the write of the `events` table
goes through an identity `mapInArrow` that sleeps in every task but the first. The first
task writes its data file into the table folder, and Delta commits only when every task has
finished, so the new data file exists for `PAUSE_SECONDS` while the commit has not happened.
The test kills this process in that window.

Usage: python tests/slow_commit_child.py <behaviorgpt ingest arguments>
"""

import sys
import time

import behaviorgpt.events as events
from behaviorgpt.cli import main
from behaviorgpt.layout import EVENTS_TABLE

PAUSE_SECONDS = 600

write_table = events.write_table


def slow_write_table(df, layout, name, **options):
    if name == EVENTS_TABLE:
        df = df.mapInArrow(_pause_after_first_task, df.schema)
    return write_table(df, layout, name, **options)


def _pause_after_first_task(batches):
    from pyspark import TaskContext

    yield from batches
    if TaskContext.get().partitionId() > 0:
        time.sleep(PAUSE_SECONDS)


if __name__ == "__main__":
    events.write_table = slow_write_table
    sys.exit(main(["ingest", *sys.argv[1:]]))
