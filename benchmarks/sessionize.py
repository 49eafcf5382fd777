"""Benchmark the sessionize stage: Spark local mode against the same rules in DuckDB SQL.

Generates one Taobao-format log with the embedded generator, converts its first 1 M, 4 M and
16 M rows to canonical-event Parquet files (DuckDB, untimed), then for each size times

* Spark: `behaviorgpt.sessions.sessionize` reading the Parquet file and writing sessions
  as Parquet, on the master given by --master (default local[2]);
* DuckDB: the same chain / window / piece rules as one SQL query writing Parquet, with as
  many threads as Spark has cores;

checks that both give the same number of sessions, and prints events per second and the
ratios. Usage:

    PYTHONPATH=lib python benchmarks/sessionize.py --work /tmp/bench --sizes 1000000 4000000 16000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import duckdb

from behaviorgpt.config import GeneratorConfig, load_config
from behaviorgpt.generator import generate_event_log

GAP_SECONDS = 30 * 60
MAX_DURATION_SECONDS = 12 * 3600
MAX_EVENTS = 1000


def prepare_inputs(work: Path, sizes: list[int], connection) -> dict[int, Path]:
    """Generate one log of at least max(sizes) events and cut canonical Parquet files."""
    largest = max(sizes)
    log_dir = work / "log"
    events_csv = log_dir / "events.csv"
    if not events_csv.is_file():
        # About 60 events per user on average (log-normal), with 10% headroom.
        config = GeneratorConfig(users=int(largest / 60 * 1.1) + 1, items=200_000,
                                 categories=2_000)
        generated = generate_event_log(log_dir, config)
        print(f"generated {generated.num_events:,} events for {generated.num_users:,} users")

    paths = {}
    for size in sizes:
        path = work / f"events_{size}.parquet"
        paths[size] = path
        if path.exists():
            continue
        connection.execute(f"""
            COPY (
              SELECT md5(concat_ws('|', user_id, item_id, category_id, behavior_type, ts))
                       AS event_id,
                     user_id AS user_key, item_id, category_id,
                     CASE behavior_type WHEN 'pv' THEN 'view' WHEN 'buy' THEN 'purchase'
                          ELSE behavior_type END AS event_type,
                     ts AS event_ts, to_timestamp(ts) AS event_time,
                     CAST(NULL AS DOUBLE) AS value, CAST(NULL AS VARCHAR) AS session_key
              FROM read_csv('{events_csv}', header = false,
                            columns = {{'user_id': 'VARCHAR', 'item_id': 'VARCHAR',
                                        'category_id': 'VARCHAR', 'behavior_type': 'VARCHAR',
                                        'ts': 'BIGINT'}})
              LIMIT {size}
            ) TO '{path}' (FORMAT parquet)""")
    return paths


def prepare_heavy_user(work: Path, size: int, connection) -> Path:
    """One user with `size` events one second apart (a bot), as canonical Parquet."""
    path = work / f"heavy_user_{size}.parquet"
    if not path.exists():
        connection.execute(f"""
            COPY (
              SELECT md5(CAST(range AS VARCHAR)) AS event_id, 'bot' AS user_key,
                     CAST(range % 5000 AS VARCHAR) AS item_id, '1' AS category_id,
                     'view' AS event_type, 1511658000 + range AS event_ts,
                     to_timestamp(1511658000 + range) AS event_time,
                     CAST(NULL AS DOUBLE) AS value, CAST(NULL AS VARCHAR) AS session_key
              FROM range({size})
            ) TO '{path}' (FORMAT parquet)""")
    return path


DUCKDB_SESSIONIZE = """
COPY (
  WITH timed AS (
    SELECT *, epoch_us(event_time) AS time_us FROM read_parquet('{input}')
  ), chained AS (
    SELECT *,
           (lag(time_us) OVER in_time IS NULL
            OR time_us - lag(time_us) OVER in_time > {gap_us}) AS starts_chain,
           row_number() OVER in_time AS row_number_in_user
    FROM timed
    WINDOW in_time AS (PARTITION BY user_key ORDER BY event_time, event_id)
  ), started AS (
    SELECT *, max(CASE WHEN starts_chain THEN time_us END) OVER so_far AS chain_start_us
    FROM chained
    WINDOW so_far AS (PARTITION BY user_key ORDER BY event_time, event_id
                      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
  ), windowed AS (
    SELECT *, (time_us - chain_start_us) // {duration_us} AS window_index FROM started
  ), window_marked AS (
    SELECT *, (starts_chain OR window_index <> lag(window_index) OVER in_time) AS starts_window
    FROM windowed
    WINDOW in_time AS (PARTITION BY user_key ORDER BY event_time, event_id)
  ), pieced AS (
    SELECT *, (row_number_in_user - max(CASE WHEN starts_window THEN row_number_in_user END)
                 OVER so_far) // {max_events} AS piece
    FROM window_marked
    WINDOW so_far AS (PARTITION BY user_key ORDER BY event_time, event_id
                      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
  )
  SELECT user_key, chain_start_us, window_index, piece,
         list(struct_pack(event_ts, event_time, event_id, item_id, category_id, event_type,
                          value) ORDER BY event_time, event_id) AS events,
         count(*) AS event_count
  FROM pieced
  GROUP BY user_key, chain_start_us, window_index, piece
) TO '{output}' (FORMAT parquet)
"""


def run_duckdb(connection, source: Path, output: Path) -> tuple[float, int]:
    started = time.perf_counter()
    connection.execute(DUCKDB_SESSIONIZE.format(
        input=source, output=output, gap_us=GAP_SECONDS * 1_000_000,
        duration_us=MAX_DURATION_SECONDS * 1_000_000, max_events=MAX_EVENTS))
    seconds = time.perf_counter() - started
    sessions = connection.execute(f"SELECT count(*) FROM read_parquet('{output}')").fetchone()[0]
    return seconds, sessions


def run_spark(spark, source: Path, output: Path) -> tuple[float, int]:
    from behaviorgpt.sessions import sessionize

    started = time.perf_counter()
    sessions = sessionize(spark.read.parquet(str(source)), gap_seconds=GAP_SECONDS,
                          max_duration_seconds=MAX_DURATION_SECONDS, max_events=MAX_EVENTS)
    sessions.write.mode("overwrite").parquet(str(output))
    seconds = time.perf_counter() - started
    return seconds, spark.read.parquet(str(output)).count()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/behaviorgpt-bench", help="scratch folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000,
                                                                16_000_000])
    parser.add_argument("--master", default="local[2]", help="Spark master (default local[2])")
    parser.add_argument("--shuffle-partitions", type=int, default=8)
    parser.add_argument("--driver-memory", default="6g")
    parser.add_argument("--heavy-user-events", type=int, default=1_000_000,
                        help="events of the one-user (bot) case; 0 skips it")
    arguments = parser.parse_args()

    work = Path(arguments.work)
    work.mkdir(parents=True, exist_ok=True)
    cores = int(arguments.master.strip("local[]") or 1) if arguments.master.startswith(
        "local[") else os.cpu_count()
    connection = duckdb.connect()
    connection.execute(f"SET threads = {cores}")
    inputs = {f"{size:,} events": path
              for size, path in prepare_inputs(work, arguments.sizes, connection).items()}
    if arguments.heavy_user_events:
        inputs[f"one user with {arguments.heavy_user_events:,} events"] = prepare_heavy_user(
            work, arguments.heavy_user_events, connection)

    from behaviorgpt.spark import build_spark_session

    config = load_config("local", [
        f"spark.master={arguments.master}",
        f"spark.shuffle_partitions={arguments.shuffle_partitions}",
        f"spark.driver_memory={arguments.driver_memory}",
        "spark.extra={'spark.ui.enabled': 'false'}"])
    spark = build_spark_session(config)

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible, "
          f"Spark master {arguments.master}, DuckDB {duckdb.__version__} with {cores} threads")
    # Untimed warm-up, so the first timed size does not pay for JVM start-up and compilation.
    run_spark(spark, next(iter(inputs.values())), work / "spark_warm_up")
    shutil.rmtree(work / "spark_warm_up", ignore_errors=True)

    results = []
    for index, (name, source) in enumerate(inputs.items()):
        size = connection.execute(f"SELECT count(*) FROM read_parquet('{source}')").fetchone()[0]
        spark_seconds, spark_sessions = run_spark(spark, source, work / f"spark_{index}")
        duck_seconds, duck_sessions = run_duckdb(connection, source,
                                                 work / f"duckdb_{index}.parquet")
        row = {"case": name, "events": size, "spark_s": round(spark_seconds, 1),
               "duckdb_s": round(duck_seconds, 1),
               "spark_events_per_s": round(size / spark_seconds),
               "duckdb_events_per_s": round(size / duck_seconds),
               "spark_vs_duckdb": round(duck_seconds / spark_seconds, 3),
               "sessions": spark_sessions, "same_sessions": spark_sessions == duck_sessions}
        results.append(row)
        print(json.dumps(row), flush=True)
        if not row["same_sessions"]:
            print(f"MISMATCH: Spark {spark_sessions} sessions, DuckDB {duck_sessions}")
        shutil.rmtree(work / f"spark_{index}", ignore_errors=True)

    sized = results[:len(arguments.sizes)]
    smallest, largest = sized[0], sized[-1]
    print(f"Spark throughput at {largest['events']:,} events: "
          f"{largest['spark_vs_duckdb']:.3f}x DuckDB (target >= 0.2)")
    print(f"Spark time({largest['events']:,}) / time({smallest['events']:,}): "
          f"{largest['spark_s'] / smallest['spark_s']:.1f} (target <= 18)")
    spark.stop()


if __name__ == "__main__":
    main()
