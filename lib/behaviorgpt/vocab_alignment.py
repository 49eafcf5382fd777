"""Re-express token sequences in another vocabulary, so that an older model can score them.

Each night's sequences are tokenized with that night's vocabulary. When the quality gate keeps
the previous model, that model was trained with an older vocabulary (copied into its folder
as `vocab/`), in which the same token id names another item. Scoring the new shards directly
would index past the model's embedding or, worse, silently score the wrong items. This module
maps each item and category token id back to its raw id through the sequences' vocabulary, then
forward to the model's token id. Raw ids the model never saw become the unknown id, as they
would have at tokenization time.

Both vocabularies stay in Spark (joined, never collected), because a vocabulary can hold tens
of millions of ids.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from behaviorgpt import tokens

log = logging.getLogger(__name__)

VOCABULARY_COLUMNS = {"item": "items", "category": "categories"}
"""Sequence column and the vocabulary file (`<vocab_dir>/<name>.parquet`) that defines its ids."""


def vocabulary_hash(vocab_dir: Path) -> str | None:
    """Return the `hash` of a vocabulary's `manifest.json`, which changes when any id changes.

    Returns None for a manifest without a hash.
    """
    manifest = json.loads((Path(vocab_dir) / "manifest.json").read_text(encoding="utf-8"))
    return manifest.get("hash")


def align_to_vocabulary(spark: SparkSession, sequences: DataFrame, source_vocab_dir: Path,
                        target_vocab_dir: Path) -> DataFrame:
    """Return `sequences` with item and category ids moved from one vocabulary to another.

    `sequences` has the shard schema (`user_key`, int arrays `item`, `category`, ...), tokenized
    with the vocabulary in `source_vocab_dir`. Reserved ids (padding, unknown, session
    boundary, mask) are the same in every vocabulary and are kept. Rows and their other
    columns are unchanged.
    """
    aligned = sequences
    for column, name in VOCABULARY_COLUMNS.items():
        mapping = _token_mapping(spark, Path(source_vocab_dir) / f"{name}.parquet",
                                 Path(target_vocab_dir) / f"{name}.parquet")
        aligned = _map_array_column(aligned, column, mapping)
    return aligned.select(*sequences.columns)


def _token_mapping(spark: SparkSession, source: Path, target: Path) -> DataFrame:
    """(source_id, target_id) for every id of the source vocabulary; unknown where unmatched."""
    source_ids = spark.read.parquet(str(source)).select(
        F.col("token_id").alias("source_id"), "raw_id")
    target_ids = spark.read.parquet(str(target)).select(
        F.col("token_id").alias("target_id"), "raw_id")
    return (source_ids.join(target_ids, "raw_id", "left")
            .select("source_id",
                    F.coalesce("target_id", F.lit(tokens.UNKNOWN_ID)).cast("int")
                    .alias("target_id")))


def _map_array_column(sequences: DataFrame, column: str, mapping: DataFrame) -> DataFrame:
    """Replace each id in the array column `column` through `mapping`, keeping the order."""
    exploded = sequences.select("user_key", F.posexplode(column).alias("position", "source_id"))
    mapped = (exploded.join(mapping, "source_id", "left")
              .select("user_key", "position",
                      F.when(F.col("source_id") < tokens.NUM_RESERVED_IDS, F.col("source_id"))
                      .otherwise(F.coalesce("target_id", F.lit(tokens.UNKNOWN_ID)))
                      .cast("int").alias("target_id")))

    # collect_list gives no order guarantee, so sort the (position, id) pairs explicitly.
    rebuilt = (mapped.groupBy("user_key")
               .agg(F.sort_array(F.collect_list(F.struct("position", "target_id")))
                    .alias("pairs"))
               .select("user_key", F.col("pairs.target_id").alias(f"_{column}")))

    # A user with an empty array has no exploded rows; keep the row with an empty array.
    joined = sequences.join(rebuilt, "user_key", "left")
    array_type = sequences.schema[column].dataType
    empty = F.array().cast(array_type)
    return (joined.withColumn(column, F.coalesce(F.col(f"_{column}").cast(array_type), empty))
            .drop(f"_{column}"))
