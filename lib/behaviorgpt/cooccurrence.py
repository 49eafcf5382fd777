"""Count which item follows which at training positions, for the co-occurrence baseline.

Spark side of `behaviorgpt.baselines.CooccurrenceTable`: it reads the sequence shards, counts
each directed pair (item at event t, item at event t + 1) where both events are training
positions, keeps the most frequent next items of each previous item and writes them as
Parquet. The torch-side evaluator reads that file with pyarrow, so it never imports pyspark.

Training positions are each user's events 0 .. length-3: the pair's second event is at most
event length-3, so the validation and test events (the last two) never enter a count.
"""

from __future__ import annotations

import json
import logging

from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F

from behaviorgpt.baselines import COOCCURRENCE_COLUMNS
from behaviorgpt.layout import Layout
from behaviorgpt.tokens import NUM_RESERVED_IDS

log = logging.getLogger(__name__)


def write_cooccurrence(spark: SparkSession, layout: Layout, neighbours: int) -> str:
    """Rebuild `layout.cooccurrence_dir` from the shards; return its path.

    Pairs that involve a reserved id (the unknown item) are not counted. Ties in the pair
    count are ranked by the lower next-item id first, so a rerun writes the same ranks.
    """
    # The manifest lists the shards, as for the evaluator, so both read the same files.
    manifest = json.loads((layout.sequences_dir / "manifest.json").read_text(encoding="utf-8"))
    paths = [str(layout.sequences_dir / shard["file"]) for shard in manifest["shards"]]
    shards = spark.read.parquet(*paths).select("item", "length")

    # Pair index i covers events i and i + 1 with i + 1 <= length - 3.
    pairs = (shards.where(F.col("length") >= 4)
             .select(F.explode(F.expr(
                 "transform(sequence(0, length - 4), "
                 "i -> named_struct('previous_item', item[i], 'next_item', item[i + 1]))"))
                 .alias("pair"))
             .select("pair.previous_item", "pair.next_item")
             .where((F.col("previous_item") >= NUM_RESERVED_IDS)
                    & (F.col("next_item") >= NUM_RESERVED_IDS)))

    counts = pairs.groupBy("previous_item", "next_item").agg(F.count("*").alias("pairs"))
    order = Window.partitionBy("previous_item").orderBy(F.col("pairs").desc(),
                                                        F.col("next_item").asc())
    ranked = (counts.withColumn("rank", F.row_number().over(order))
              .where(F.col("rank") <= neighbours)
              .select(*COOCCURRENCE_COLUMNS))

    path = str(layout.cooccurrence_dir)
    ranked.coalesce(1).write.mode("overwrite").parquet(path)
    log.info("wrote the co-occurrence baseline table (%d neighbours per item) to %s",
             neighbours, path)
    return path
