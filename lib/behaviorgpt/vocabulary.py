"""Build, write and reuse the item and category vocabularies (Spark side).

Token ids of one kind (items or categories):

- 0 .. NUM_RESERVED_IDS-1: the reserved ids of `behaviorgpt.tokens`;
- NUM_RESERVED_IDS .. NUM_RESERVED_IDS+V-1: the V raw ids seen at least `min_count` times in
  the training window, most frequent first, ties broken by raw id;
- the next `oov_buckets` ids: hashed buckets. A raw id outside the vocabulary maps to bucket
  `pmod(xxhash64(raw_id), oov_buckets)` (Spark's xxhash64, seed 42), so a rare or new item
  keeps an id that it shares only with the raw ids of the same bucket. Without buckets it
  maps to the unknown id.

The artifact is `vocab/items.parquet` and `vocab/categories.parquet` (columns `token_id`,
`raw_id`, `count`) plus `vocab/manifest.json` with the sizes, counts, bucket count and a
SHA-256 over the Parquet files. A frozen vocabulary is an earlier artifact reused unchanged:
its ids never shift and raw ids that it lacks go to the hashed buckets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from behaviorgpt import tokens

log = logging.getLogger(__name__)

VOCAB_KINDS = ("items", "categories")
MANIFEST_FORMAT_VERSION = 2


def build_vocabulary(events: DataFrame, column: str, *, in_training: Column,
                     min_count: int) -> DataFrame:
    """Assign token ids to the values of `column` by descending frequency.

    Counts use only the rows where `in_training` holds, so held-out events never add ids.
    Ids start at `tokens.NUM_RESERVED_IDS`; ties in count are broken by the raw id so that
    ids are stable.
    """
    counts = (events.where(in_training & F.col(column).isNotNull())
              .groupBy(F.col(column).alias("raw_id")).agg(F.count(F.lit(1)).alias("count"))
              .where(F.col("count") >= min_count))

    # zipWithIndex numbers a sorted RDD without pulling it into one partition.
    ordered = counts.orderBy(F.desc("count"), F.asc("raw_id"))
    indexed = ordered.rdd.zipWithIndex().map(
        lambda pair: (pair[1] + tokens.NUM_RESERVED_IDS, pair[0]["raw_id"], pair[0]["count"]))
    return events.sparkSession.createDataFrame(
        indexed, "token_id int, raw_id string, count long")


def token_id_column(raw_id: Column, token_id: Column, *, vocabulary_size: int,
                    oov_buckets: int) -> Column:
    """Return the token id of a raw id given its vocabulary `token_id` (null when absent).

    `vocabulary_size` counts the reserved ids, so the first bucket id equals it.
    """
    if oov_buckets == 0:
        out_of_vocabulary = F.lit(tokens.UNKNOWN_ID)
    else:
        bucket = F.pmod(F.xxhash64(raw_id), F.lit(oov_buckets))
        out_of_vocabulary = F.when(raw_id.isNull(), F.lit(tokens.UNKNOWN_ID)).otherwise(
            F.lit(vocabulary_size) + bucket)
    return F.coalesce(token_id, out_of_vocabulary).cast("int")


def write_vocabulary(vocab_dir: Path, vocabularies: dict[str, DataFrame], *, oov_buckets: int,
                     details: dict) -> dict:
    """Write each vocabulary as one Parquet file plus `manifest.json`; return the manifest.

    `details` (min counts, training window, ...) is copied into the manifest as is.

    NOTE: each vocabulary is written through one Spark partition, so a vocabulary must fit
    one executor task (tens of millions of ids do). The driver never loads it.
    """
    vocab_dir.mkdir(parents=True, exist_ok=True)
    for kind, frame in vocabularies.items():
        staging = vocab_dir / f"_{kind}"
        frame.orderBy("token_id").coalesce(1).write.mode("overwrite").parquet(str(staging))
        part = next(staging.glob("part-*.parquet"))
        part.replace(vocab_dir / f"{kind}.parquet")
        shutil.rmtree(staging)
    return write_vocabulary_manifest(vocab_dir, oov_buckets=oov_buckets, details=details)


def write_vocabulary_manifest(vocab_dir: Path, *, oov_buckets: int, details: dict) -> dict:
    """Describe the Parquet files of `vocab_dir` in its `manifest.json`; return the manifest."""
    manifest = {"format_version": MANIFEST_FORMAT_VERSION,
                "reserved": {"pad": tokens.PAD_ID, "unknown": tokens.UNKNOWN_ID,
                             "session_boundary": tokens.SESSION_BOUNDARY_ID,
                             "mask": tokens.MASK_ID},
                "num_event_types": tokens.NUM_EVENT_TYPE_IDS,
                "event_types": list(tokens.EVENT_TYPES),
                "num_time_gaps": tokens.NUM_TIME_GAP_IDS,
                "oov_buckets": oov_buckets,
                **details}
    manifest["hash"] = vocabulary_hash(vocab_dir)
    manifest["version"] = manifest["hash"][:12]
    for kind in VOCAB_KINDS:
        table = pq.read_table(vocab_dir / f"{kind}.parquet", columns=["count"])
        size = table.num_rows
        # num_<kind> is the size of the model's id space: reserved, vocabulary and buckets.
        manifest[f"num_{kind}"] = tokens.NUM_RESERVED_IDS + size + oov_buckets
        manifest[f"{kind}_in_vocabulary"] = size
        manifest[f"{kind}_counted_events"] = int(pc.sum(table.column("count")).as_py() or 0)
    (vocab_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n",
                                             encoding="utf-8")
    return manifest


def vocabulary_hash(vocab_dir: Path) -> str:
    """SHA-256 over the bytes of the vocabulary Parquet files, in `VOCAB_KINDS` order."""
    digest = hashlib.sha256()
    for kind in VOCAB_KINDS:
        digest.update((vocab_dir / f"{kind}.parquet").read_bytes())
    return digest.hexdigest()


def reuse_frozen_vocabulary(spark: SparkSession, frozen_dir: str | Path,
                            vocab_dir: Path) -> tuple[dict[str, DataFrame], dict]:
    """Copy a frozen vocabulary into `vocab_dir` after checking its hash; return it and its
    manifest.

    Raises FileNotFoundError when the folder lacks a file, and ValueError when the files do
    not match the manifest's hash (the artifact was changed after it was written).
    """
    frozen_dir = Path(frozen_dir).expanduser().resolve()
    manifest_path = frozen_dir / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"frozen vocabulary manifest not found: {manifest_path}. Fix: "
                                f"set sequences.frozen_vocab_dir to a folder written by an "
                                f"earlier sequences run (its sequences/vocab)")
    frozen = json.loads(manifest_path.read_text(encoding="utf-8"))
    actual = vocabulary_hash(frozen_dir)
    if frozen.get("hash") != actual:
        raise ValueError(f"{frozen_dir}: the vocabulary files hash to {actual} but the "
                         f"manifest records {frozen.get('hash')}; the artifact was modified")

    vocab_dir.mkdir(parents=True, exist_ok=True)
    if frozen_dir != vocab_dir.resolve():
        for kind in VOCAB_KINDS:
            shutil.copyfile(frozen_dir / f"{kind}.parquet", vocab_dir / f"{kind}.parquet")
    details = {key: value for key, value in frozen.items()
               if key not in ("hash", "version") and not key.startswith("num_")}
    details["frozen_from"] = {"path": str(frozen_dir), "hash": frozen["hash"]}
    manifest = write_vocabulary_manifest(vocab_dir, oov_buckets=int(frozen.get("oov_buckets", 0)),
                                         details=details)

    # Read the copies, so this run does not depend on the frozen folder after this point.
    frames = {kind: spark.read.parquet(str(vocab_dir / f"{kind}.parquet"))
              for kind in VOCAB_KINDS}
    log.info("reusing frozen vocabulary %s (%d items, %d categories)", frozen["hash"][:12],
             manifest["items_in_vocabulary"], manifest["categories_in_vocabulary"])
    return frames, manifest
