"""Score users' latest sequences with the trained model inside Spark and upsert their profiles.

The model runs in `mapInPandas`, the iterator form of a pandas UDF: each Python worker loads
the weights once (cached per process, keyed by model folder) and scores Arrow batches of at most
`spark.sql.execution.arrow.maxRecordsPerBatch` users in model batches of `score.batch_size`.
The model folder must be readable from every executor (a shared or distributed filesystem).

Tables (columns are documented in `docs/tables.md`):

- `user_interest_profiles`: one row per user, upserted with MERGE on `user_key`;
- `user_interest_profiles_history`: the rows scored for each run date, partitioned by
  `run_date` and replaced per date with `replaceWhere`.

In incremental mode (the default) only users whose sequence changed since their stored profile
(a different last event time or history length) are scored, and users whose profile came from
another model version. `score.full_rescore` scores everyone.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from behaviorgpt.config import ScoreConfig
from behaviorgpt.errors import MODEL_FIX, CorruptFileError
from behaviorgpt.layout import PROFILES_HISTORY_TABLE, PROFILES_TABLE, Layout
from behaviorgpt.tables import (deduplicate, merge_table, read_table, register_table,
                                retry_commit_conflicts, write_table)
from behaviorgpt.tokens import EVENT_TYPES
from behaviorgpt.validation import sql_date

log = logging.getLogger(__name__)

INPUT_COLUMNS = ("user_key", "item", "category", "event_type", "time_gap", "session_start",
                 "length", "event_time", "item_id", "category_id")
"""Shard columns the UDF reads; other columns never cross into Python."""

PREDICTION_SCHEMA = (
    "user_key string, top_item_ids array<string>, top_item_scores array<double>, "
    "top_category_ids array<string>, top_category_scores array<double>, "
    "embedding array<float>, purchase_propensity double, return_propensity double, "
    "history_length int, last_event_ts long, "
    "evidence_explains array<string>, evidence_item_ids array<string>, "
    "evidence_category_ids array<string>, evidence_event_types array<string>, "
    "evidence_event_ts array<long>, evidence_attributions array<double>"
)
"""UDF output. Evidence leaves Python as flat aligned arrays (one entry per cited event) and is
nested per explained category by `_nest_evidence`, in Spark."""

EVENT_TYPE_NAMES = {index + 2: name for index, name in enumerate(EVENT_TYPES)}
"""Event type token id -> canonical name; any other id is reported as "unknown"."""

NEWEST_FIRST = ["run_date", "last_event_time", "history_length"]
"""Tie-break order among several rows of one user: the later run, then the later last event,
then the longer history."""

_loaded_models: dict = {}
"""Models loaded in this Python worker, by folder: Spark reuses workers across tasks."""


@dataclass(frozen=True)
class ProfileWrite:
    """Outcome of one scoring run's writes."""

    users_scored: int
    merge_attempts: int
    history_attempts: int
    catalog_names: tuple[str, ...]


def select_users_to_score(spark: SparkSession, sequences: DataFrame, layout: Layout, *,
                          model_version: str, full_rescore: bool) -> DataFrame:
    """Return the sequence rows to score: all of them, or only those whose profile is stale.

    A stored profile is current when it has the same `model_version`, the same
    `history_length` and the same `last_event_time` as the sequence. Any new event moves the
    last event time, so such a user is rescored.

    NOTE: a late event older than the user's last event, in a sequence already at max_len
    events, changes neither value and is picked up only by the next full rescore.
    """
    if full_rescore or not (layout.table(PROFILES_TABLE) / "_delta_log").is_dir():
        return sequences

    current = read_table(spark, layout, PROFILES_TABLE).where(
        F.col("model_version") == F.lit(model_version))
    sequence_state = sequences.select(
        "user_key",
        F.col("length").alias("sequence_length"),
        F.timestamp_seconds(F.element_at("event_time", -1)).alias("sequence_last_time"))
    unchanged = (current.join(sequence_state, "user_key")
                 .where((F.col("history_length") == F.col("sequence_length"))
                        & (F.col("last_event_time") == F.col("sequence_last_time")))
                 .select("user_key"))
    return sequences.join(unchanged, "user_key", "left_anti")


def score_users(spark: SparkSession, sequences: DataFrame, model_dir: Path, *, top_k: int,
                batch_size: int, num_threads: int, run_date: str, evidence_categories: int = 0,
                evidence_events: int = 3) -> DataFrame:
    """Return one profile row per sequence row, scored by the model in `model_dir`.

    `sequences` has the shard columns (`INPUT_COLUMNS`). The result has the columns of
    `user_interest_profiles`.
    """
    model_dir = Path(model_dir)
    model_version = read_model_version(model_dir)
    model_path = str(model_dir)

    def score_batches(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import torch

        from behaviorgpt.inference import load_model, predict_next

        torch.set_num_threads(num_threads)
        if model_path not in _loaded_models:
            _loaded_models[model_path] = load_model(model_path)
        model = _loaded_models[model_path]

        for frame in frames:
            predictions = predict_next(model, frame, top_k=top_k, batch_size=batch_size,
                                       evidence_categories=evidence_categories,
                                       evidence_events=evidence_events)
            yield _output_frame(frame, predictions)

    scored = sequences.select(*INPUT_COLUMNS).mapInPandas(score_batches, PREDICTION_SCHEMA)
    top_categories = _zip_scores("top_category_ids", "top_category_scores", "category_id")
    return scored.select(
        "user_key",
        top_categories.alias("top_categories"),
        _zip_scores("top_item_ids", "top_item_scores", "item_id").alias("top_items"),
        "purchase_propensity",
        "return_propensity",
        _nest_evidence(top_categories, evidence_categories).alias("evidence"),
        "embedding",
        "history_length",
        F.timestamp_seconds("last_event_ts").alias("last_event_time"),
        F.lit(model_version).alias("model_version"),
        F.to_date(F.lit(run_date)).alias("run_date"),
    )


def write_profiles(spark: SparkSession, profiles: DataFrame, layout: Layout, *, run_date: str,
                   settings: ScoreConfig) -> ProfileWrite:
    """Upsert `profiles` into the current table, replace the run date's history, register both.

    The history partition of `run_date` receives this run's rows plus the current rows of the
    same date that this run did not rescore, so an incremental rerun of a date rewrites the
    same partition. Both writes retry Delta commit conflicts.
    """
    day = dt.date.fromisoformat(run_date)

    # The scored rows feed two writes; persisting keeps the model from running twice.
    scored = deduplicate(profiles, "user_key", newest_first=NEWEST_FIRST)
    scored = scored.persist(StorageLevel.MEMORY_AND_DISK)
    users_scored = scored.count()

    merge_attempts = merge_table(spark, scored, layout, PROFILES_TABLE, key="user_key",
                                 newest_first=NEWEST_FIRST, attempts=settings.commit_attempts,
                                 backoff_seconds=settings.commit_backoff_seconds)

    def replace_history() -> None:
        kept = (read_table(spark, layout, PROFILES_TABLE)
                .where(F.col("run_date") == F.lit(day))
                .join(scored.select("user_key"), "user_key", "left_anti"))
        rows = scored.unionByName(kept)
        write_table(rows, layout, PROFILES_HISTORY_TABLE, partition_by=["run_date"],
                    replace_where=f"run_date = {sql_date(day.isoformat(), 'run_date')}")

    _, history_attempts = retry_commit_conflicts(
        replace_history, table=PROFILES_HISTORY_TABLE, attempts=settings.commit_attempts,
        backoff_seconds=settings.commit_backoff_seconds)
    scored.unpersist()

    catalog_names: tuple[str, ...] = ()
    if settings.database:
        catalog_names = tuple(register_table(spark, layout, name, settings.database)
                              for name in (PROFILES_TABLE, PROFILES_HISTORY_TABLE))
    log.info("profiles: %d users scored for %s; registered as %s", users_scored, run_date,
             ", ".join(catalog_names) or "(no catalog)")
    return ProfileWrite(users_scored=users_scored, merge_attempts=merge_attempts,
                        history_attempts=history_attempts, catalog_names=catalog_names)


def read_model_version(model_dir: Path) -> str:
    """Return the model version named in a model folder's `model_config.json`.

    Raises CorruptFileError naming the file when it is not JSON with a `model_version`.
    """
    config_path = Path(model_dir) / "model_config.json"
    try:
        return json.loads(config_path.read_text(encoding="utf-8"))["model_version"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise CorruptFileError(config_path, f"no readable model_version ({error!r})",
                               MODEL_FIX) from None


def _output_frame(frame: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """Join the model's predictions with the raw ids and times of the evidence events."""
    evidence: dict[str, list] = {"item_ids": [], "category_ids": [], "event_types": [],
                                 "event_ts": []}
    for row, positions in enumerate(predictions["evidence_positions"]):
        items, categories = frame["item_id"].iat[row], frame["category_id"].iat[row]
        types, times = frame["event_type"].iat[row], frame["event_time"].iat[row]
        evidence["item_ids"].append([items[p] for p in positions])
        evidence["category_ids"].append([categories[p] for p in positions])
        evidence["event_types"].append([EVENT_TYPE_NAMES.get(int(types[p]), "unknown")
                                        for p in positions])
        evidence["event_ts"].append([int(times[p]) for p in positions])

    return pd.DataFrame({
        "user_key": frame["user_key"].to_numpy(),
        "top_item_ids": predictions["top_item_ids"].to_numpy(),
        "top_item_scores": predictions["top_item_scores"].to_numpy(),
        "top_category_ids": predictions["top_category_ids"].to_numpy(),
        "top_category_scores": predictions["top_category_scores"].to_numpy(),
        "embedding": predictions["embedding"].to_numpy(),
        "purchase_propensity": predictions["purchase_propensity"].astype("float64").to_numpy(),
        "return_propensity": predictions["return_propensity"].astype("float64").to_numpy(),
        "history_length": frame["length"].to_numpy(),
        "last_event_ts": frame["event_time"].map(lambda times: int(times[-1])).to_numpy(),
        "evidence_explains": predictions["evidence_category_ids"].to_numpy(),
        "evidence_item_ids": evidence["item_ids"],
        "evidence_category_ids": evidence["category_ids"],
        "evidence_event_types": evidence["event_types"],
        "evidence_event_ts": evidence["event_ts"],
        "evidence_attributions": predictions["evidence_attributions"].to_numpy(),
    })


def _zip_scores(ids: str, scores: str, id_name: str) -> Column:
    return F.transform(F.arrays_zip(F.col(ids).alias(id_name), F.col(scores).alias("score")),
                       lambda pair: F.struct(pair[id_name].alias(id_name),
                                             pair["score"].alias("score")))


def _nest_evidence(top_categories: Column, explained: int) -> Column:
    """Build `array<struct<category_id, score, events>>` for the first `explained` categories."""
    cited = F.arrays_zip(
        F.col("evidence_explains").alias("explains"),
        F.col("evidence_item_ids").alias("item_id"),
        F.col("evidence_category_ids").alias("category_id"),
        F.col("evidence_event_types").alias("event_type"),
        F.col("evidence_event_ts").alias("event_ts"),
        F.col("evidence_attributions").alias("attribution"))

    def events_of(category: Column) -> Column:
        own = F.filter(cited, lambda event: event["explains"] == category["category_id"])
        return F.transform(own, lambda event: F.struct(
            event["item_id"].alias("item_id"),
            event["category_id"].alias("category_id"),
            event["event_type"].alias("event_type"),
            F.timestamp_seconds(event["event_ts"]).alias("event_time"),
            event["attribution"].alias("attribution")))

    chosen = F.filter(top_categories, lambda category, index: index < explained)
    return F.transform(chosen, lambda category: F.struct(
        category["category_id"].alias("category_id"),
        category["score"].alias("score"),
        events_of(category).alias("events")))
