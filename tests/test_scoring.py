"""The scoring job's Delta writes: MERGE upserts, history by date, evidence, concurrent writers,
incremental selection and reading the tables back without Spark.

A small randomly initialised model scores hand-built users, so the tests check the tables'
plumbing rather than the model's quality.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from deltalake import DeltaTable
from pyspark.sql import functions as F

from behaviorgpt.checkpoint import save_checkpoint
from behaviorgpt.config import ScoreConfig
from behaviorgpt.data import EventSequences, make_batch
from behaviorgpt.layout import PROFILES_HISTORY_TABLE, PROFILES_TABLE, Layout
from behaviorgpt.model import BehaviorGPT, BehaviorGPTConfig
from behaviorgpt.scoring import (score_users, select_users_to_score, write_profiles)
from behaviorgpt.tables import (CommitConflictError, merge_table, register_table,
                                retry_commit_conflicts)
from shards_helper import synthetic_users, write_dataset

NUM_ITEMS = 60
NUM_CATEGORIES = 10
MAX_LEN = 12
RUN_DATE = "2017-12-04"
SETTINGS = ScoreConfig(top_k=3, batch_size=4, evidence_categories=2, evidence_events=2,
                       database="scoring_test", commit_attempts=4, commit_backoff_seconds=0.05)


@pytest.fixture(scope="module")
def scoring_root(tmp_path_factory) -> Path:
    """A root with two shards of 9 synthetic users (some longer than MAX_LEN) and a model."""
    root = tmp_path_factory.mktemp("scoring")
    users, _ = synthetic_users(9, NUM_ITEMS, NUM_CATEGORIES, min_length=3, max_length=16,
                               seed=3)
    write_dataset(root, users, [5, 4], MAX_LEN, NUM_ITEMS, NUM_CATEGORIES)

    torch.manual_seed(0)
    model = BehaviorGPT(BehaviorGPTConfig(num_items=NUM_ITEMS, num_categories=NUM_CATEGORIES,
                                          max_len=MAX_LEN, d_model=16, n_layer=1, n_head=2))
    layout = Layout.from_root(root)
    save_checkpoint(model.eval(), layout, "v1", layout.vocab_dir, {})
    layout.point(layout.latest_model_file, "v1")  # serve it, as the gate would
    return root


@pytest.fixture(scope="module")
def scored_root(spark, scoring_root, tmp_path_factory) -> Path:
    """`scoring_root` scored once for RUN_DATE; tests that change it work on a copy."""
    root = tmp_path_factory.mktemp("scored") / "root"
    _copy_inputs(scoring_root, root)
    _score(spark, root)
    return root


def _score(spark, root: Path, settings: ScoreConfig = SETTINGS, run_date: str = RUN_DATE,
           full_rescore: bool = True):
    layout = Layout.from_root(root)
    shards = spark.read.parquet(str(layout.sequences_dir / "part-*.parquet"))
    to_score = select_users_to_score(spark, shards, layout, model_version="v1",
                                     full_rescore=full_rescore)
    profiles = score_users(spark, to_score, layout.latest_model_dir(), top_k=settings.top_k,
                           batch_size=settings.batch_size, num_threads=1, run_date=run_date,
                           evidence_categories=settings.evidence_categories,
                           evidence_events=settings.evidence_events)
    return write_profiles(spark, profiles, layout, run_date=run_date, settings=settings)


def _rows(path: Path) -> list[dict]:
    """All rows of a Delta table read with deltalake, sorted, for exact comparison."""
    table = DeltaTable(str(path)).to_pyarrow_table().to_pylist()
    return sorted(table, key=lambda row: (str(row["run_date"]), row["user_key"]))


@pytest.mark.slow
def test_rerun_is_idempotent(spark, tmp_path, scored_root):
    root = tmp_path / "root"
    layout = _copy_scored(scored_root, root)

    profiles_once = _rows(layout.table(PROFILES_TABLE))
    history_once = _rows(layout.table(PROFILES_HISTORY_TABLE))
    full = _score(spark, root)
    incremental = _score(spark, root, full_rescore=False)

    assert full.users_scored == 9
    assert incremental.users_scored == 0
    assert len(profiles_once) == 9
    assert len(history_once) == 9
    assert _rows(layout.table(PROFILES_TABLE)) == profiles_once
    assert _rows(layout.table(PROFILES_HISTORY_TABLE)) == history_once


@pytest.mark.slow
def test_history_keeps_each_date(spark, tmp_path, scored_root):
    root = tmp_path / "root"
    layout = _copy_scored(scored_root, root)

    _score(spark, root, run_date="2017-12-05")
    _score(spark, root, run_date="2017-12-04")  # a late rerun of the older date

    history = DeltaTable(str(layout.table(PROFILES_HISTORY_TABLE))).to_pandas()
    current = DeltaTable(str(layout.table(PROFILES_TABLE))).to_pandas()
    assert history.groupby("run_date").size().tolist() == [9, 9]
    assert len(current) == 9
    # The rerun of the older date must not overwrite the newer current rows.
    assert {str(day) for day in current["run_date"]} == {"2017-12-05"}


def test_duplicate_source_rows_merge(spark, tmp_path, scored_root):
    layout = _copy_scored(scored_root, tmp_path / "root")
    path = str(layout.table(PROFILES_TABLE))
    before = DeltaTable(path).to_pandas().set_index("user_key")["last_event_time"]
    # Pinned to the version read above: the DataFrame is lazy and the merge changes the table.
    profiles = spark.read.format("delta").option("versionAsOf", DeltaTable(path).version()) \
        .load(path)

    # Every user three times: twice identical, once with a later last event time.
    later = profiles.withColumn("last_event_time",
                                F.col("last_event_time") + F.expr("INTERVAL 1 HOUR"))
    duplicated = profiles.unionByName(profiles).unionByName(later)
    merge_table(spark, duplicated, layout, PROFILES_TABLE, key="user_key",
                newest_first=["run_date", "last_event_time"], attempts=1, backoff_seconds=0.0)

    merged = DeltaTable(path).to_pandas()
    assert len(merged) == 9
    assert merged["user_key"].is_unique
    for row in merged.itertuples():
        assert row.last_event_time == before[row.user_key] + pd.Timedelta(hours=1)


def test_evidence_events_in_history(scored_root):
    layout = Layout.from_root(scored_root)

    shards = [row for path in sorted(layout.sequences_dir.glob("part-*.parquet"))
              for row in pq.read_table(path, columns=["user_key", "item_id", "category_id",
                                                      "event_type", "event_time"]).to_pylist()]
    type_names = {2: "view", 3: "cart", 4: "fav", 5: "purchase"}
    history = {row["user_key"]: {(item, category, type_names[kind], time)
                                 for item, category, kind, time in zip(
                                     row["item_id"], row["category_id"], row["event_type"],
                                     row["event_time"])}
               for row in shards}

    profiles = DeltaTable(str(layout.table(PROFILES_TABLE))).to_pyarrow_table().to_pylist()
    cited = 0
    for profile in profiles:
        explained = [entry["category_id"] for entry in profile["evidence"]]
        assert explained == [c["category_id"] for c in profile["top_categories"][:2]]
        for entry in profile["evidence"]:
            assert len(entry["events"]) <= 2
            attributions = [event["attribution"] for event in entry["events"]]
            assert attributions == sorted(attributions, reverse=True)
            for event in entry["events"]:
                key = (event["item_id"], event["category_id"], event["event_type"],
                       int(event["event_time"].timestamp()))
                assert key in history[profile["user_key"]]
                assert event["attribution"] > 0
                cited += 1
    assert cited > 0


def test_evidence_positions_skip_padding():
    torch.manual_seed(1)
    model = BehaviorGPT(BehaviorGPTConfig(num_items=NUM_ITEMS, num_categories=NUM_CATEGORIES,
                                          max_len=MAX_LEN, d_model=16, n_layer=1,
                                          n_head=2)).eval()
    users, _ = synthetic_users(3, NUM_ITEMS, NUM_CATEGORIES, min_length=2, max_length=8, seed=5)
    sequences = EventSequences.from_arrow(pa.Table.from_pylist(users), MAX_LEN)
    batch = make_batch(sequences, [0, 1, 2], "score")
    categories = torch.tensor([[4, 5]] * 3)
    attributions = model.category_attribution(batch, batch.last_positions, categories)

    assert attributions.shape == (3, 2, batch.item.shape[1])
    for row, length in enumerate(batch.lengths.tolist()):
        assert torch.all(attributions[row, :, length:] == 0)
        assert torch.any(attributions[row, :, :length] != 0)
    assert all(parameter.grad is None for parameter in model.parameters())


def test_propensities_are_probabilities(scored_root):
    profiles = DeltaTable(str(Layout.from_root(scored_root).table(PROFILES_TABLE))).to_pandas()

    # The model has purchase and return heads, so every profile carries both propensities.
    for column in ("purchase_propensity", "return_propensity"):
        assert profiles[column].notna().all(), column
        assert profiles[column].between(0.0, 1.0).all(), column


@pytest.mark.slow
def test_incremental_scores_changed_users(spark, tmp_path, scored_root):
    root = tmp_path / "root"
    layout = _copy_scored(scored_root, root)

    # One user gets a new event: the rewritten shard is what the next night's run reads.
    shard_path = sorted(layout.sequences_dir.glob("part-*.parquet"))[0]
    rows = pq.read_table(shard_path).to_pylist()
    changed = rows[0]
    for column in ("item", "category", "event_type", "time_gap", "session_start", "item_id",
                   "category_id"):
        changed[column] = changed[column] + changed[column][-1:]
    changed["event_time"] = changed["event_time"] + [changed["event_time"][-1] + 3600]
    changed["length"] += 1

    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(shard_path)), shard_path)

    shards = spark.read.parquet(str(layout.sequences_dir / "part-*.parquet"))
    incremental = select_users_to_score(spark, shards, layout, model_version="v1",
                                        full_rescore=False)
    full = select_users_to_score(spark, shards, layout, model_version="v1", full_rescore=True)
    other_model = select_users_to_score(spark, shards, layout, model_version="v2",
                                        full_rescore=False)

    assert [row.user_key for row in incremental.select("user_key").collect()] \
        == [changed["user_key"]]
    assert full.count() == 9
    assert other_model.count() == 9

    written = _score(spark, root, full_rescore=False)
    assert written.users_scored == 1
    profiles = DeltaTable(str(layout.table(PROFILES_TABLE))).to_pandas().set_index("user_key")
    assert profiles.loc[changed["user_key"], "history_length"] == changed["length"]


@pytest.mark.slow
def test_concurrent_writers_both_land(spark, tmp_path, scored_root):
    layout = _copy_scored(scored_root, tmp_path / "root")
    profiles = spark.read.format("delta").load(str(layout.table(PROFILES_TABLE))).cache()
    profiles.count()
    keys = sorted(row.user_key for row in profiles.select("user_key").collect())

    # Writer A moves users 0-5 to a new date; writer B moves users 3-8 and a new user, so they
    # overlap. B's source waits (inside its transaction) until A has committed, which forces a
    # real commit conflict on B's first attempt instead of hoping the timing produces one.
    started, committed = tmp_path / "b_started", tmp_path / "a_committed"

    def wait_for_writer_a(key):
        # Runs in a Python worker, so it is self-contained. One task blocks here (the source
        # is one partition), which leaves writer A the other core of local[2].
        import pathlib
        import time as clock

        pathlib.Path(started).touch()
        deadline = clock.monotonic() + 120
        while not pathlib.Path(committed).exists() and clock.monotonic() < deadline:
            clock.sleep(0.05)
        return key

    gate = F.udf(wait_for_writer_a, "string")
    source_a = profiles.where(F.col("user_key").isin(keys[:6])) \
        .withColumn("run_date", F.to_date(F.lit("2017-12-05")))
    source_b = profiles.where(F.col("user_key").isin(keys[3:])) \
        .unionByName(profiles.where(F.col("user_key") == keys[0])
                     .withColumn("user_key", F.lit("new-user"))) \
        .withColumn("run_date", F.to_date(F.lit("2017-12-06"))) \
        .coalesce(1).withColumn("user_key", gate("user_key"))

    attempts: dict[str, int] = {}
    errors: list[BaseException] = []

    def write(name, source):
        try:
            if name == "a":
                _wait_until(started)
            attempts[name] = merge_table(spark, source, layout, PROFILES_TABLE, key="user_key",
                                         newest_first=["run_date"], attempts=4,
                                         backoff_seconds=0.05)
            if name == "a":
                committed.touch()
        except BaseException as error:  # reported by the assert below, with its traceback
            errors.append(error)
            committed.touch()

    threads = [threading.Thread(target=write, args=(name, source))
               for name, source in (("a", source_a), ("b", source_b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)

    assert errors == []
    assert attempts["a"] == 1
    assert attempts["b"] >= 2
    merged = DeltaTable(str(layout.table(PROFILES_TABLE))).to_pandas()
    dates = dict(zip(merged["user_key"], merged["run_date"].astype(str)))
    assert len(merged) == 10
    assert merged["user_key"].is_unique
    assert [dates[key] for key in keys[:3]] == ["2017-12-05"] * 3
    assert [dates[key] for key in keys[3:]] == ["2017-12-06"] * 6
    assert dates["new-user"] == "2017-12-06"
    profiles.unpersist()


def test_conflict_retries_give_up(spark):
    from delta.exceptions.base import ConcurrentAppendException

    calls = []

    def always_conflicts():
        calls.append(time.monotonic())
        raise ConcurrentAppendException(message="files were added by a concurrent update")

    with pytest.raises(CommitConflictError, match=r"conflicted with a concurrent writer 3 "
                                                  r"times \(ConcurrentAppendException\)"):
        retry_commit_conflicts(always_conflicts, table="t", attempts=3, backoff_seconds=0.01)
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.01
    assert calls[2] - calls[1] >= 0.02


def test_tables_read_without_spark(spark, scored_root):
    layout = Layout.from_root(scored_root)

    # deltalake reads the transaction log; DuckDB queries the same files as an Arrow dataset.
    profiles = DeltaTable(str(layout.table(PROFILES_TABLE)))
    dataset = profiles.to_pyarrow_dataset()
    [(users, explained)] = duckdb.sql(
        "SELECT count(*), sum(len(evidence)) FROM dataset").fetchall()
    history = DeltaTable(str(layout.table(PROFILES_HISTORY_TABLE)))

    assert users == 9
    assert explained == 18
    assert history.metadata().partition_columns == ["run_date"]
    assert spark.table("scoring_test.user_interest_profiles").count() == 9
    assert spark.sql("SELECT count(*) FROM scoring_test.user_interest_profiles_history "
                     f"WHERE run_date = DATE'{RUN_DATE}'").first()[0] == 9


def test_catalog_name_rejected(spark, scored_root):
    layout = Layout.from_root(scored_root)

    with pytest.raises(ValueError, match="score.database = 'bad-name; DROP' is invalid"):
        register_table(spark, layout, PROFILES_TABLE, "bad-name; DROP")


def _copy_inputs(source: Path, target: Path) -> None:
    shutil.copytree(source / "sequences", target / "sequences")
    shutil.copytree(source / "models", target / "models")


def _copy_scored(source: Path, target: Path) -> Layout:
    """Copy a scored root (inputs, model and Delta tables); the catalog is not copied."""
    _copy_inputs(source, target)
    shutil.copytree(source / "delta", target / "delta")
    return Layout.from_root(target)


def _wait_until(path: Path, timeout_seconds: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_seconds} s")
        time.sleep(0.05)
