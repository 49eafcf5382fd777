"""Score every user's latest sequence with the trained model inside Spark.

The model runs in `mapInPandas`, the iterator form of a pandas UDF: each Python worker loads
the weights once (cached per process, keyed by model folder) and scores Arrow batches of at most
`spark.sql.execution.arrow.maxRecordsPerBatch` users in model batches of `score.batch_size`.
The model folder must be readable from every executor (a shared or distributed filesystem).

Table `user_interest_profiles` has one row per user: `user_key`, `top_categories` and
`top_items` (arrays of `{id, score}` structs, best first), `embedding` (the user's final hidden
state), `history_length`, `last_event_time`, `model_version` and `run_date`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from behaviorgpt.layout import PROFILES_TABLE, Layout
from behaviorgpt.tables import write_table

log = logging.getLogger(__name__)

PREDICTION_SCHEMA = (
    "user_key string, top_item_ids array<string>, top_item_scores array<double>, "
    "top_category_ids array<string>, top_category_scores array<double>, "
    "embedding array<float>, history_length int, last_event_ts long"
)

_loaded_models: dict = {}
"""Models loaded in this Python worker, by folder: Spark reuses workers across tasks."""


def score_users(spark: SparkSession, sequences: DataFrame, model_dir: Path, *, top_k: int,
                batch_size: int, num_threads: int, run_date: str) -> DataFrame:
    """Return one profile row per sequence row, scored by the model in `model_dir`."""
    model_dir = Path(model_dir)
    model_version = json.loads((model_dir / "model_config.json").read_text(
        encoding="utf-8"))["model_version"]
    model_path = str(model_dir)

    def score_batches(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import torch

        from behaviorgpt.inference import load_model, predict_next

        torch.set_num_threads(num_threads)
        if model_path not in _loaded_models:
            _loaded_models[model_path] = load_model(model_path)
        model = _loaded_models[model_path]

        for frame in frames:
            predictions = predict_next(model, frame, top_k=top_k, batch_size=batch_size)
            yield pd.DataFrame({
                "user_key": frame["user_key"].to_numpy(),
                "top_item_ids": predictions["top_item_ids"].to_numpy(),
                "top_item_scores": predictions["top_item_scores"].to_numpy(),
                "top_category_ids": predictions["top_category_ids"].to_numpy(),
                "top_category_scores": predictions["top_category_scores"].to_numpy(),
                "embedding": predictions["embedding"].to_numpy(),
                "history_length": frame["length"].to_numpy(),
                "last_event_ts": frame["event_time"].map(lambda times: int(times[-1])).to_numpy(),
            })

    scored = sequences.mapInPandas(score_batches, PREDICTION_SCHEMA)
    return scored.select(
        "user_key",
        _zip_scores("top_category_ids", "top_category_scores", "category_id")
        .alias("top_categories"),
        _zip_scores("top_item_ids", "top_item_scores", "item_id").alias("top_items"),
        "embedding",
        "history_length",
        F.timestamp_seconds("last_event_ts").alias("last_event_time"),
        F.lit(model_version).alias("model_version"),
        F.to_date(F.lit(run_date)).alias("run_date"),
    )


def write_profiles(profiles: DataFrame, layout: Layout) -> None:
    """Replace `user_interest_profiles` with the freshly scored rows."""
    write_table(profiles, layout, PROFILES_TABLE)


def _zip_scores(ids: str, scores: str, id_name: str):
    return F.transform(F.arrays_zip(F.col(ids).alias(id_name), F.col(scores).alias("score")),
                       lambda pair: F.struct(pair[id_name].alias(id_name),
                                             pair["score"].alias("score")))
