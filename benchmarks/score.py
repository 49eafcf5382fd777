"""Compare the Spark scoring job with plain batched PyTorch inference on the same users.

Setup: the users are synthetic. Their sequences draw item and category ids from the trained
model's own vocabulary (item popularity follows a Zipf law), with lengths uniform in
[5, max_len], so both paths do the same work as on real shards. They are written once as
Parquet shards in the scoring job's format. Both paths then score every user with the same
model and the same settings (top-k, batch size, evidence):

- plain PyTorch: one process reads the shards with pyarrow and calls `predict_next` chunk by
  chunk, with torch using every core;
- Spark: `local[cores]` runs `score_users` (mapInPandas, one torch thread per Python worker)
  and writes to Spark's `noop` sink, so neither path pays for a Delta write.

Usage (needs a trained model, for example the one `behaviorgpt run` writes):

    PYTHONPATH=lib python benchmarks/score.py --root /path/to/warehouse --users 100000

It prints users per second for both paths and their ratio (Spark / plain PyTorch).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from behaviorgpt.config import load_config
from behaviorgpt.layout import Layout
from behaviorgpt.tokens import NUM_RESERVED_IDS, NUM_TIME_GAP_IDS

ROWS_PER_SHARD = 25_000


def write_synthetic_shards(folder: Path, model_dir: Path, users: int, seed: int) -> int:
    """Write `users` synthetic sequences as Parquet shards; return the number of events."""
    from behaviorgpt.inference import load_model

    loaded = load_model(model_dir)
    config = loaded.config
    rng = np.random.default_rng(seed)
    real_items = config.num_items - NUM_RESERVED_IDS
    events = 0
    folder.mkdir(parents=True, exist_ok=True)

    for shard, start in enumerate(range(0, users, ROWS_PER_SHARD)):
        count = min(ROWS_PER_SHARD, users - start)
        lengths = rng.integers(5, config.max_len + 1, size=count)
        total = int(lengths.sum())
        events += total
        items = (rng.zipf(1.3, size=total) % real_items + NUM_RESERVED_IDS).astype(np.int32)
        categories = rng.integers(NUM_RESERVED_IDS, config.num_categories,
                                  size=total).astype(np.int32)
        event_types = rng.choice([2, 2, 2, 2, 3, 4, 5], size=total).astype(np.int32)
        time_gaps = rng.integers(2, NUM_TIME_GAP_IDS, size=total).astype(np.int32)
        session_start = (rng.random(total) < 0.1).astype(np.int32)
        times = 1_512_000_000 + np.cumsum(rng.integers(1, 600, size=total)).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)

        def lists(values: np.ndarray) -> pa.ListArray:
            return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))

        table = pa.table({
            "user_key": pa.array([f"bench-{start + row:08d}" for row in range(count)]),
            "item": lists(items),
            "category": lists(categories),
            "event_type": lists(event_types),
            "time_gap": lists(time_gaps),
            "session_start": lists(session_start),
            "event_time": lists(times),
            "item_id": lists(loaded.item_raw_ids[items].astype(str)),
            "category_id": lists(loaded.category_raw_ids[categories].astype(str)),
            "length": pa.array(lengths.astype(np.int32)),
        })
        pq.write_table(table, folder / f"part-{shard:05d}.parquet")
    return events


def run_plain_torch(folder: Path, model_dir: Path, settings, threads: int) -> float:
    """Score every shard in this process; return the seconds taken (model load included)."""
    import torch

    from behaviorgpt.inference import load_model, predict_next

    started = time.perf_counter()
    torch.set_num_threads(threads)
    loaded = load_model(model_dir)
    for path in sorted(folder.glob("part-*.parquet")):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            predict_next(loaded, batch.to_pandas(), top_k=settings.top_k,
                         batch_size=settings.batch_size,
                         evidence_categories=settings.evidence_categories,
                         evidence_events=settings.evidence_events)
    return time.perf_counter() - started


def run_spark(folder: Path, model_dir: Path, config, cores: int) -> float:
    """Score every shard with the Spark job into the noop sink; return the seconds taken."""
    from behaviorgpt.scoring import score_users
    from behaviorgpt.spark import build_spark_session

    spark = build_spark_session(config)
    settings = config.score
    shards = spark.read.parquet(str(folder)).repartition(cores * 4)
    started = time.perf_counter()
    profiles = score_users(spark, shards, model_dir, top_k=settings.top_k,
                           batch_size=settings.batch_size, num_threads=1,
                           run_date="2017-12-04",
                           evidence_categories=settings.evidence_categories,
                           evidence_events=settings.evidence_events)
    profiles.write.format("noop").mode("overwrite").save()
    seconds = time.perf_counter() - started
    spark.stop()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="warehouse root with a trained model")
    parser.add_argument("--users", type=int, default=100_000, help="synthetic users to score")
    parser.add_argument("--cores", type=int, default=os.cpu_count(),
                        help="cores for both paths (Spark local[cores], torch threads)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override, e.g. score.batch_size=512")
    arguments = parser.parse_args()

    config = load_config("local", [f"spark.master=local[{arguments.cores}]",
                                   "spark.extra={'spark.ui.enabled': 'false'}",
                                   *arguments.overrides])
    model_dir = Layout.from_root(arguments.root).latest_model_dir()

    with tempfile.TemporaryDirectory(prefix="score-bench-") as scratch:
        folder = Path(scratch) / "shards"
        events = write_synthetic_shards(folder, model_dir, arguments.users, arguments.seed)
        torch_seconds = run_plain_torch(folder, model_dir, config.score, arguments.cores)
        spark_seconds = run_spark(folder, model_dir, config, arguments.cores)

    result = {
        "users": arguments.users,
        "events": events,
        "cores": arguments.cores,
        "model": model_dir.name,
        "score_settings": {"top_k": config.score.top_k, "batch_size": config.score.batch_size,
                           "evidence_categories": config.score.evidence_categories,
                           "evidence_events": config.score.evidence_events},
        "plain_torch_users_per_s": round(arguments.users / torch_seconds, 1),
        "spark_users_per_s": round(arguments.users / spark_seconds, 1),
        "spark_to_torch_ratio": round(torch_seconds / spark_seconds, 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
