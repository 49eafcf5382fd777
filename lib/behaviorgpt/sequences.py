"""Build the vocabulary, each user's token sequence and the training examples (Spark side).

Each row of `sequences/shards/` is one user: `user_key`, the int32 arrays `item`, `category`,
`event_type`, `time_gap` and `session_start`, the int64 array `event_time` (Unix seconds), the
string arrays `item_id` and `category_id` (raw ids, so that scoring can name the events it cites
as evidence), all oldest event first and holding the user's most recent `max_len` events, and
`length`. The evaluation and scoring jobs read these rows.

`sequences/examples/<split>/part-<shard>.parquet` contain the examples of
`behaviorgpt.examples`: training examples with their task labels, and the validation and test
examples of the configured split protocol. The executors write them with a fixed number of
rows per row group, and `sequences/examples/manifest.json` lists them with their row counts. Shard s belongs
to training rank s % world_size. The id spaces are defined in `behaviorgpt.tokens` and
`behaviorgpt.vocabulary`.

The vocabulary counts the training window only: under leave-one-out every event except each
user's last one (the test target), under the temporal protocol the events before the cutoff.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from behaviorgpt import tokens
from behaviorgpt.examples import (EXAMPLE_SCHEMA, STREAM_COLUMNS, ExampleSettings,
                                  RowGroupWriter, user_examples, write_examples_manifest)
from behaviorgpt.layout import Layout
from behaviorgpt.vocabulary import (build_vocabulary, reuse_frozen_vocabulary, token_id_column,
                                    write_vocabulary)

log = logging.getLogger(__name__)

_SHARD_SUMMARY = "split string, shard int, file string, rows long, row_groups int"

def flatten_sessions(sessions: DataFrame) -> DataFrame:
    """Explode sessions into one row per event with its `session_start` flag.

    The flag is 1 for a session's first event and 0 otherwise.
    """
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


def example_settings(config, sessions: DataFrame) -> ExampleSettings:
    """Build the example settings of a `PipelineConfig`, resolving an empty temporal cutoff.

    An empty `examples.cutoff` under the temporal protocol means midnight UTC of the day of
    the latest event, so the last day of the log is the test period. Raises ConfigError for a
    cutoff that is not an ISO 8601 date or time.
    """
    from behaviorgpt.config import ConfigError

    options = config.examples
    cutoff = None
    if options.protocol == "temporal":
        if options.cutoff:
            try:
                instant = dt.datetime.fromisoformat(options.cutoff)
            except ValueError:
                raise ConfigError(f"examples.cutoff = {options.cutoff!r} is invalid: expected "
                                  f"ISO 8601 such as 2017-12-03T00:00:00. Fix: set "
                                  f"examples.cutoff to a UTC date or time") from None
            if instant.tzinfo is None:
                instant = instant.replace(tzinfo=dt.timezone.utc)
            cutoff = int(instant.timestamp())
        else:
            latest = sessions.agg(F.max("session_end").alias("latest")).first()["latest"]
            if latest is None:
                raise ValueError("the sessions table is empty, so there is no temporal cutoff "
                                 "to derive; set examples.cutoff")
            day = latest.replace(tzinfo=dt.timezone.utc).date() if latest.tzinfo is None \
                else latest.astimezone(dt.timezone.utc).date()
            cutoff = int(dt.datetime(day.year, day.month, day.day,
                                     tzinfo=dt.timezone.utc).timestamp())
    return ExampleSettings(
        protocol=options.protocol, max_len=config.sequences.max_len, cutoff=cutoff,
        stride=options.stride, max_windows_per_user=options.max_windows_per_user,
        category_window_seconds=options.category_window_hours * 3600,
        purchase_window_seconds=options.purchase_window_hours * 3600,
        return_window_seconds=options.return_days * 86_400)


def training_window(settings: ExampleSettings) -> Column:
    """Condition on numbered events that holds for the events of the training window."""
    if settings.protocol == "temporal":
        return F.col("event_ts") < F.lit(settings.cutoff)
    return F.col("rank_from_end") > 1


def tokenize_events(numbered: DataFrame, items: DataFrame, categories: DataFrame,
                    vocab_manifest: dict) -> DataFrame:
    """Add the token id streams of every event (`item`, `category`, `event_type`, ...)."""
    buckets = int(vocab_manifest.get("oov_buckets", 0))
    item_ids = items.select(F.col("raw_id").alias("item_id"), F.col("token_id").alias("item_token"))
    category_ids = categories.select(F.col("raw_id").alias("category_id"),
                                     F.col("token_id").alias("category_token"))
    joined = (numbered.join(item_ids, "item_id", "left")
              .join(category_ids, "category_id", "left"))

    event_type_id = F.element_at(
        F.create_map(*[F.lit(x) for pair in tokens.EVENT_TYPE_IDS.items() for x in pair]),
        F.col("event_type"))
    gap_bucket = F.when(F.col("gap_seconds").isNull(), tokens.FIRST_EVENT_GAP_ID).otherwise(
        2 + F.least(F.floor(F.log2(1 + F.greatest(F.col("gap_seconds"), F.lit(0)))),
                    F.lit(tokens.MAX_GAP_LOG2)))
    vocabulary_sizes = {kind: tokens.NUM_RESERVED_IDS + int(vocab_manifest[f"{kind}_in_vocabulary"])
                        for kind in ("items", "categories")}

    return joined.select(
        "user_key", "event_ts", "event_id", "rank_from_end",
        token_id_column(F.col("item_id"), F.col("item_token"),
                        vocabulary_size=vocabulary_sizes["items"], oov_buckets=buckets)
        .alias("item"),
        token_id_column(F.col("category_id"), F.col("category_token"),
                        vocabulary_size=vocabulary_sizes["categories"], oov_buckets=buckets)
        .alias("category"),
        F.coalesce(event_type_id, F.lit(tokens.UNKNOWN_ID)).cast("int").alias("event_type"),
        gap_bucket.cast("int").alias("time_gap"),
        F.col("session_start").cast("int").alias("session_start"),
        F.col("item_id"),
        F.col("category_id"),
    )


def user_histories(token_events: DataFrame) -> DataFrame:
    """Group token events into one row per user with the streams in time order."""
    position = F.struct("event_ts", "event_id", *STREAM_COLUMNS, "item_id", "category_id")
    grouped = token_events.groupBy("user_key").agg(
        F.array_sort(F.collect_list(position)).alias("events"))
    return grouped.select(
        "user_key",
        *[F.col("events")[name].alias(name) for name in STREAM_COLUMNS],
        F.col("events")["event_ts"].alias("event_time"),
        F.col("events")["item_id"].alias("item_id"),
        F.col("events")["category_id"].alias("category_id"),
        F.size("events").cast("int").alias("length"),
    )


def example_history(token_events: DataFrame, settings: ExampleSettings) -> DataFrame:
    """Keep the events that the user's examples can use (inputs, targets or labels).

    Under leave-one-out these are the most recent events that the sliding examples reach.
    Under the temporal protocol they are the same number of events before the cutoff plus
    the events up to the end of the longest label window after it.
    """
    reach = settings.max_len + settings.window_stride * (settings.max_windows_per_user - 1) + 2
    if settings.protocol == "leave_one_out":
        return token_events.where(F.col("rank_from_end") <= reach)

    longest_window = max(settings.category_window_seconds, settings.purchase_window_seconds,
                         settings.return_window_seconds)
    in_history = F.col("event_ts") < F.lit(settings.cutoff)
    by_period = Window.partitionBy("user_key", in_history).orderBy(
        F.desc("event_ts"), F.desc("event_id"))
    ranked = token_events.withColumn("history_rank", F.row_number().over(by_period))
    keep = ((in_history & (F.col("history_rank") <= reach))
            | (~in_history & (F.col("event_ts") < F.lit(settings.cutoff + longest_window))))
    return ranked.where(keep).drop("history_rank")


def make_examples(histories: DataFrame, settings: ExampleSettings) -> DataFrame:
    """Return every example of every user (`EXAMPLE_SCHEMA`), made on the executors."""

    def cut(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            rows = []
            for user in batch.to_pylist():
                rows.extend(user_examples(user["user_key"], user, settings))
            if rows:
                yield pa.RecordBatch.from_pylist(rows, schema=EXAMPLE_SCHEMA)

    return histories.mapInArrow(cut, _spark_schema(EXAMPLE_SCHEMA))


def write_example_shards(examples: DataFrame, examples_dir: Path, *, num_shards: int,
                         rows_per_row_group: int) -> list[dict]:
    """Write `examples_dir/<split>/part-<shard>.parquet` on the executors; return the files.

    A user's examples all go to shard `pmod(xxhash64(user_key), num_shards)`. Each shard file
    is written by the one task that processes the shard, in example-id order, with row groups of
    exactly `rows_per_row_group` rows (the last one smaller). Spark's Parquet writer sizes row
    groups in bytes only, hence the pyarrow writer.

    NOTE: `examples_dir` must be a filesystem path that every executor can write (local mode or
    a shared mount), and speculative execution must stay off, since two attempts of one task
    would write the same file.
    """
    target = str(examples_dir)
    schema = EXAMPLE_SCHEMA

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        writers: dict[tuple[str, int], RowGroupWriter] = {}
        for batch in batches:
            table = pa.Table.from_batches([batch])
            keys = table.select(["split", "shard"]).group_by(["split", "shard"]).aggregate([])
            for split, shard in zip(keys.column("split").to_pylist(),
                                    keys.column("shard").to_pylist()):
                key = (split, shard)
                if key not in writers:
                    writers[key] = RowGroupWriter(Path(target) / split / f"part-{shard:05d}.parquet",
                                                   schema, rows_per_row_group)
                chosen = pc.and_(pc.equal(table.column("split"), split),
                                 pc.equal(table.column("shard"), shard))
                writers[key].write(table.filter(chosen).drop_columns(["shard"]))
        summary = []
        for (split, shard), writer in writers.items():
            writer.close()
            summary.append({"split": split, "shard": shard,
                            "file": f"{split}/part-{shard:05d}.parquet",
                            "rows": writer.rows, "row_groups": writer.row_groups})
        if summary:
            yield pa.RecordBatch.from_pylist(summary, schema=_spark_arrow(_SHARD_SUMMARY))

    sharded = (examples.withColumn("shard", F.pmod(F.xxhash64("user_key"), F.lit(num_shards))
                                   .cast("int"))
               .repartition(num_shards, "shard")
               .sortWithinPartitions("split", "shard", "example_id"))
    files = sharded.mapInArrow(write, _SHARD_SUMMARY).collect()  # bounded: a row per shard file
    return sorted((row.asDict() for row in files), key=lambda row: row["file"])


def build_sequences(spark: SparkSession, sessions: DataFrame, layout: Layout, *, max_len: int,
                    min_item_count: int, num_shards: int, oov_buckets: int = 0,
                    frozen_vocab_dir: str | Path | None = None,
                    settings: ExampleSettings | None = None,
                    rows_per_row_group: int = 2048) -> dict:
    """Write the vocabulary, the user shards and the example shards with their manifests.

    `settings` defaults to leave-one-out examples of `max_len` events. Returns the manifest
    of the user shards, with the example manifest under `examples`.
    """
    settings = settings or ExampleSettings(protocol="leave_one_out", max_len=max_len)
    numbered = number_events(flatten_sessions(sessions)).persist()

    if frozen_vocab_dir:
        vocabularies, vocab_manifest = reuse_frozen_vocabulary(spark, frozen_vocab_dir,
                                                               layout.vocab_dir)
    else:
        in_training = training_window(settings)
        vocabularies = {
            "items": build_vocabulary(numbered, "item_id", in_training=in_training,
                                      min_count=min_item_count),
            "categories": build_vocabulary(numbered, "category_id", in_training=in_training,
                                           min_count=1),
        }
        window = ("events before the cutoff" if settings.protocol == "temporal"
                  else "every event but each user's last")
        vocab_manifest = write_vocabulary(
            layout.vocab_dir, vocabularies, oov_buckets=oov_buckets,
            details={"min_count": {"items": min_item_count, "categories": 1},
                     "training_window": {"protocol": settings.protocol,
                                         "cutoff": settings.cutoff, "counts": window}})
        vocabularies = {kind: spark.read.parquet(str(layout.vocab_dir / f"{kind}.parquet"))
                        for kind in vocabularies}

    token_events = tokenize_events(numbered, vocabularies["items"], vocabularies["categories"],
                                   vocab_manifest).persist()

    sequences = user_histories(token_events.where(F.col("rank_from_end") <= max_len))
    shards_dir = layout.sequences_dir / "shards"
    (sequences.repartition(num_shards, "user_key")
     .sortWithinPartitions("user_key")
     .write.mode("overwrite").parquet(str(shards_dir)))

    examples_dir = layout.sequences_dir / "examples"
    if examples_dir.exists():
        shutil.rmtree(examples_dir)
    examples = make_examples(user_histories(example_history(token_events, settings)), settings)
    files = write_example_shards(examples, examples_dir, num_shards=num_shards,
                                 rows_per_row_group=rows_per_row_group)
    examples_manifest = write_examples_manifest(examples_dir, files, settings=settings,
                                                num_shards=num_shards,
                                                rows_per_row_group=rows_per_row_group,
                                                vocab_manifest=vocab_manifest)

    manifest = write_shard_manifest(layout.sequences_dir, shards_dir, max_len=max_len,
                                    vocab_manifest=vocab_manifest)
    manifest["examples"] = examples_manifest
    for frame in (numbered, token_events):
        frame.unpersist()
    log.info("wrote %d sequences in %d shards and %s examples to %s", manifest["rows"],
             len(manifest["shards"]),
             {split: part["rows"] for split, part in examples_manifest["splits"].items()},
             layout.sequences_dir)
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
                "vocab_dir": "vocab", "vocab_hash": vocab_manifest["hash"],
                "examples_dir": "examples"}
    (sequences_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n",
                                                 encoding="utf-8")
    return manifest


def _spark_schema(schema: pa.Schema) -> str:
    """Spark DDL of the Arrow schema of the examples."""
    names = {pa.string(): "string", pa.int32(): "int", pa.int64(): "long",
             pa.list_(pa.int32()): "array<int>", pa.list_(pa.int64()): "array<long>"}
    return ", ".join(f"{field.name} {names[field.type]}" for field in schema)


def _spark_arrow(ddl: str) -> pa.Schema:
    """Arrow schema of a flat Spark DDL string of string, int and long columns."""
    types = {"string": pa.string(), "int": pa.int32(), "long": pa.int64()}
    return pa.schema([(name, types[kind]) for name, kind in
                      (column.strip().split(" ") for column in ddl.split(","))])
