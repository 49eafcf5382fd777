"""Build the vocabulary and each user's token sequence, written as Parquet shards for training.

Each shard row is one user: `user_key`, the int32 arrays `item`, `category`, `event_type`,
`time_gap` and `session_start`, the int64 array `event_time` (Unix seconds), the string arrays
`item_id` and `category_id` (raw ids, so that scoring can name the events it cites as
evidence), all oldest event first and holding the user's most recent `max_len` events, and
`length`. The id spaces are
defined in `behaviorgpt.tokens`.

The vocabulary counts every event except each user's last one, which leave-one-out evaluation
holds out as the test target; items and categories seen only there map to the unknown id.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from behaviorgpt import tokens
from behaviorgpt.layout import Layout

log = logging.getLogger(__name__)

VOCAB_KINDS = ("items", "categories")


def flatten_sessions(sessions: DataFrame) -> DataFrame:
    """One row per event with its `session_start` flag (1 for a session's first event)."""
    exploded = sessions.select("user_key", F.posexplode("events").alias("position", "event"))
    return exploded.select(
        "user_key",
        "event.*",
        F.when(F.col("position") == 0, 1).otherwise(0).alias("session_start"),
    )


def number_events(events: DataFrame) -> DataFrame:
    """Add `gap_seconds` since the user's previous event and `rank_from_end` (1 = latest)."""
    in_time = Window.partitionBy("user_key").orderBy("event_ts", "event_id")
    whole_user = Window.partitionBy("user_key")
    return (events
            .withColumn("gap_seconds", F.col("event_ts") - F.lag("event_ts").over(in_time))
            .withColumn("rank_from_end",
                        F.count(F.lit(1)).over(whole_user) - F.row_number().over(in_time) + 1))


def build_vocabulary(numbered: DataFrame, column: str, *, min_count: int) -> DataFrame:
    """Assign token ids to the values of `column` by descending frequency.

    Counts exclude each user's last event (the held-out test target). Ids start at
    `tokens.NUM_RESERVED_IDS`; ties in count are broken by the raw id so that ids are stable.
    """
    counts = (numbered.where((F.col("rank_from_end") > 1) & F.col(column).isNotNull())
              .groupBy(F.col(column).alias("raw_id")).agg(F.count(F.lit(1)).alias("count"))
              .where(F.col("count") >= min_count))

    # zipWithIndex numbers a sorted RDD without pulling it into one partition.
    ordered = counts.orderBy(F.desc("count"), F.asc("raw_id"))
    indexed = ordered.rdd.zipWithIndex().map(
        lambda pair: (pair[1] + tokens.NUM_RESERVED_IDS, pair[0]["raw_id"], pair[0]["count"]))
    return numbered.sparkSession.createDataFrame(
        indexed, "token_id int, raw_id string, count long")


def tokenize(numbered: DataFrame, items: DataFrame, categories: DataFrame, *,
             max_len: int) -> DataFrame:
    """Return one row per user with the token arrays of the most recent `max_len` events."""
    recent = numbered.where(F.col("rank_from_end") <= max_len)

    item_ids = items.select(F.col("raw_id").alias("item_id"), F.col("token_id").alias("item_token"))
    category_ids = categories.select(F.col("raw_id").alias("category_id"),
                                     F.col("token_id").alias("category_token"))
    joined = (recent.join(item_ids, "item_id", "left")
              .join(category_ids, "category_id", "left"))

    event_type_id = F.element_at(
        F.create_map(*[F.lit(x) for pair in tokens.EVENT_TYPE_IDS.items() for x in pair]),
        F.col("event_type"))
    gap_bucket = F.when(F.col("gap_seconds").isNull(), tokens.FIRST_EVENT_GAP_ID).otherwise(
        2 + F.least(F.floor(F.log2(1 + F.greatest(F.col("gap_seconds"), F.lit(0)))),
                    F.lit(tokens.MAX_GAP_LOG2)))

    position = F.struct(
        F.col("event_ts"),
        F.col("event_id"),
        F.coalesce("item_token", F.lit(tokens.UNKNOWN_ID)).cast("int").alias("item"),
        F.coalesce("category_token", F.lit(tokens.UNKNOWN_ID)).cast("int").alias("category"),
        F.coalesce(event_type_id, F.lit(tokens.UNKNOWN_ID)).cast("int").alias("event_type"),
        gap_bucket.cast("int").alias("time_gap"),
        F.col("session_start").cast("int").alias("session_start"),
        F.col("item_id"),
        F.col("category_id"),
    )
    grouped = joined.groupBy("user_key").agg(F.array_sort(F.collect_list(position)).alias("events"))

    return grouped.select(
        "user_key",
        *[F.col("events")[name].alias(name)
          for name in ("item", "category", "event_type", "time_gap", "session_start")],
        F.col("events")["event_ts"].alias("event_time"),
        F.col("events")["item_id"].alias("item_id"),
        F.col("events")["category_id"].alias("category_id"),
        F.size("events").cast("int").alias("length"),
    )


def build_sequences(spark: SparkSession, sessions: DataFrame, layout: Layout, *, max_len: int,
                    min_item_count: int, num_shards: int) -> dict:
    """Write the vocabulary and the sequence shards with their manifests; return the manifest."""
    numbered = number_events(flatten_sessions(sessions)).persist()

    items = build_vocabulary(numbered, "item_id", min_count=min_item_count).persist()
    categories = build_vocabulary(numbered, "category_id", min_count=1).persist()
    vocab_manifest = write_vocabulary(layout.vocab_dir, {"items": items, "categories": categories})

    sequences = tokenize(numbered, items, categories, max_len=max_len)
    shards_dir = layout.sequences_dir / "shards"
    (sequences.repartition(num_shards, "user_key")
     .sortWithinPartitions("user_key")
     .write.mode("overwrite").parquet(str(shards_dir)))

    manifest = write_shard_manifest(layout.sequences_dir, shards_dir, max_len=max_len,
                                    vocab_manifest=vocab_manifest)
    for frame in (numbered, items, categories):
        frame.unpersist()
    log.info("wrote %d sequences in %d shards to %s", manifest["rows"], len(manifest["shards"]),
             shards_dir)
    return manifest


def write_vocabulary(vocab_dir: Path, vocabularies: dict[str, DataFrame]) -> dict:
    """Write each vocabulary as one Parquet file plus `manifest.json` with sizes and a hash.

    NOTE: each vocabulary is written through one Spark partition, so a vocabulary must fit
    one executor task (tens of millions of ids do); the driver never holds it.
    """
    vocab_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"reserved": {"pad": tokens.PAD_ID, "unknown": tokens.UNKNOWN_ID,
                             "session_boundary": tokens.SESSION_BOUNDARY_ID,
                             "mask": tokens.MASK_ID},
                "num_event_types": tokens.NUM_EVENT_TYPE_IDS,
                "event_types": list(tokens.EVENT_TYPES),
                "num_time_gaps": tokens.NUM_TIME_GAP_IDS}
    digest = hashlib.sha256()
    for kind, frame in vocabularies.items():
        staging = vocab_dir / f"_{kind}"
        frame.orderBy("token_id").coalesce(1).write.mode("overwrite").parquet(str(staging))
        part = next(staging.glob("part-*.parquet"))
        target = vocab_dir / f"{kind}.parquet"
        part.replace(target)
        _remove_tree(staging)

        table = pq.read_metadata(target)
        count = table.num_rows
        manifest[f"num_{kind}"] = count + tokens.NUM_RESERVED_IDS
        manifest[f"{kind}_in_vocabulary"] = count
        digest.update(target.read_bytes())

    manifest["hash"] = digest.hexdigest()
    (vocab_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n",
                                             encoding="utf-8")
    return manifest


def write_shard_manifest(sequences_dir: Path, shards_dir: Path, *, max_len: int,
                         vocab_manifest: dict) -> dict:
    """List the shard files with their row counts (from Parquet footers) in `manifest.json`."""
    shards = []
    for path in sorted(shards_dir.glob("part-*.parquet")):
        shards.append({"file": str(path.relative_to(sequences_dir)),
                       "rows": pq.read_metadata(path).num_rows})
    manifest = {"num_shards": len(shards), "max_len": max_len,
                "rows": sum(shard["rows"] for shard in shards), "shards": shards,
                "vocab_dir": "vocab", "vocab_hash": vocab_manifest["hash"]}
    (sequences_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n",
                                                 encoding="utf-8")
    return manifest


def _remove_tree(path: Path) -> None:
    for child in sorted(path.rglob("*"), reverse=True):
        child.unlink() if child.is_file() or child.is_symlink() else child.rmdir()
    path.rmdir()
