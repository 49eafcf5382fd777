"""Write small synthetic sequence shards and vocabularies in the Spark side's file format.

Users of the synthetic data have one dominant category and draw most new items from it. They
often return to an item they saw a few events earlier. A model that learns this repeat and
category structure beats the most-popular baseline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from behaviorgpt.examples import (EXAMPLE_SCHEMA, ExampleSettings, RowGroupWriter,
                                  user_examples, write_examples_manifest)
from behaviorgpt.tokens import NUM_EVENT_TYPE_IDS, NUM_RESERVED_IDS, NUM_TIME_GAP_IDS

_IDS = pa.list_(pa.int32())


def make_user(items: list[int], categories: list[int], key: str = "u0",
              event_types: list[int] | None = None) -> dict:
    """Return one shard row for a hand-built history (event type 2 = view by default)."""
    length = len(items)
    return {
        "user_key": key,
        "item": list(items),
        "category": list(categories),
        "event_type": list(event_types) if event_types else [2] * length,
        "time_gap": [1] + [10] * (length - 1),
        "session_start": [1] + [0] * (length - 1),
        "event_time": [1_500_000_000 + 60 * i for i in range(length)],
        # Raw ids as write_vocab names them; reserved ids (unknown) get "raw<id>".
        "item_id": [f"i{item}" if item >= NUM_RESERVED_IDS else f"raw{item}" for item in items],
        "category_id": [f"c{category}" if category >= NUM_RESERVED_IDS else f"raw{category}"
                        for category in categories],
        "length": length,
    }


def synthetic_users(num_users: int, num_items: int, num_categories: int, min_length: int,
                    max_length: int, seed: int = 0, repeat_share: float = 0.4,
                    dominant_share: float = 0.8) -> tuple[list[dict], np.ndarray]:
    """Generate users and return them with each user's dominant category id.

    Item and category ids are token ids (reserved ids excluded). Item i belongs to category
    NUM_RESERVED_IDS + (i % real categories). With probability `repeat_share` an event repeats
    one of the user's last five items. Otherwise it draws a new item, from the dominant
    category with probability `dominant_share`, with a popularity skew inside each category.
    """
    rng = np.random.default_rng(seed)
    real_items = np.arange(NUM_RESERVED_IDS, num_items)
    real_categories = num_categories - NUM_RESERVED_IDS
    item_category = NUM_RESERVED_IDS + (real_items - NUM_RESERVED_IDS) % real_categories
    by_category = {c: real_items[item_category == c]
                   for c in range(NUM_RESERVED_IDS, num_categories)}

    users, dominant = [], []
    for index in range(num_users):
        favourite = int(rng.integers(NUM_RESERVED_IDS, num_categories))
        length = int(rng.integers(min_length, max_length + 1))
        items: list[int] = []
        for _ in range(length):
            if items and rng.random() < repeat_share:
                items.append(items[-1 - int(rng.integers(0, min(5, len(items))))])
                continue
            category = (favourite if rng.random() < dominant_share
                        else int(rng.integers(NUM_RESERVED_IDS, num_categories)))
            pool = by_category[category]
            weights = 1.0 / np.arange(1, len(pool) + 1)
            items.append(int(rng.choice(pool, p=weights / weights.sum())))
        categories = [int(item_category[item - NUM_RESERVED_IDS]) for item in items]
        event_types = rng.choice([2, 2, 2, 3, 4], size=length).tolist()
        users.append(make_user(items, categories, key=f"user-{index:05d}",
                               event_types=event_types))
        dominant.append(favourite)
    return users, np.array(dominant)


def write_vocab(vocab_dir: Path, num_items: int, num_categories: int) -> None:
    """Write items.parquet, categories.parquet and manifest.json; raw ids are 'i<id>'/'c<id>'."""
    vocab_dir.mkdir(parents=True, exist_ok=True)
    for name, size, prefix in (("items", num_items, "i"), ("categories", num_categories, "c")):
        ids = np.arange(NUM_RESERVED_IDS, size, dtype=np.int32)
        pq.write_table(pa.table({"token_id": pa.array(ids, pa.int32()),
                                 "raw_id": pa.array([f"{prefix}{i}" for i in ids]),
                                 "count": pa.array(np.ones(len(ids), np.int64))}),
                       vocab_dir / f"{name}.parquet")
    manifest = {"num_items": num_items, "num_categories": num_categories,
                "num_event_types": NUM_EVENT_TYPE_IDS, "num_time_gaps": NUM_TIME_GAP_IDS}
    (vocab_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def write_shards(sequences_dir: Path, users: list[dict], shard_sizes: list[int],
                 max_len: int) -> None:
    """Write `users` split into consecutive shards of `shard_sizes` rows, plus manifest.json."""
    if sum(shard_sizes) != len(users):
        raise ValueError(f"shard sizes {shard_sizes} do not add up to {len(users)} users")
    sequences_dir.mkdir(parents=True, exist_ok=True)
    shards, start = [], 0
    for index, size in enumerate(shard_sizes):
        rows = users[start:start + size]
        start += size
        name = f"part-{index:05d}.parquet"
        table = pa.table({
            "user_key": pa.array([row["user_key"] for row in rows], pa.string()),
            **{column: pa.array([row[column] for row in rows], _IDS)
               for column in ("item", "category", "event_type", "time_gap", "session_start")},
            "event_time": pa.array([row["event_time"] for row in rows], pa.list_(pa.int64())),
            **{column: pa.array([row[column] for row in rows], pa.list_(pa.string()))
               for column in ("item_id", "category_id")},
            "length": pa.array([row["length"] for row in rows], pa.int32()),
        })
        pq.write_table(table, sequences_dir / name)
        shards.append({"file": name, "rows": size})
    manifest = {"num_shards": len(shards), "max_len": max_len, "shards": shards}
    (sequences_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def write_examples(sequences_dir: Path, users: list[dict], shard_sizes: list[int], max_len: int,
                   rows_per_row_group: int = 64) -> dict:
    """Write the leave-one-out examples of `users`, shard by shard like `write_shards`, into
    `sequences_dir/examples` with its manifest; return the manifest."""
    settings = ExampleSettings(protocol="leave_one_out", max_len=max_len)
    examples_dir = sequences_dir / "examples"
    files, start = [], 0
    for shard, size in enumerate(shard_sizes):
        writers: dict[str, RowGroupWriter] = {}
        for user in users[start:start + size]:
            for example in user_examples(user["user_key"], user, settings):
                split = example["split"]
                if split not in writers:
                    writers[split] = RowGroupWriter(
                        examples_dir / split / f"part-{shard:05d}.parquet", EXAMPLE_SCHEMA,
                        rows_per_row_group)
                writers[split].write(pa.Table.from_pylist([example], schema=EXAMPLE_SCHEMA))
        start += size
        for split, writer in writers.items():
            writer.close()
            files.append({"split": split, "shard": shard,
                          "file": f"{split}/part-{shard:05d}.parquet", "rows": writer.rows,
                          "row_groups": writer.row_groups})
    return write_examples_manifest(examples_dir, files, settings=settings,
                                   num_shards=len(shard_sizes),
                                   rows_per_row_group=rows_per_row_group,
                                   vocab_manifest={"hash": "synthetic"})


def write_dataset(root: Path, users: list[dict], shard_sizes: list[int], max_len: int,
                  num_items: int, num_categories: int) -> Path:
    """Write shards, examples and vocabulary under `root/sequences` (the Layout paths);
    return that folder."""
    sequences_dir = root / "sequences"
    write_shards(sequences_dir, users, shard_sizes, max_len)
    write_examples(sequences_dir, users, shard_sizes, max_len)
    write_vocab(sequences_dir / "vocab", num_items, num_categories)
    return sequences_dir


def train_in_process(root: Path, monkeypatch, model_version: str, *settings: str) -> dict:
    """Train on the dataset under `root` in this process, without torchrun; return the
    saved model's description (`model_config.json`).

    The torchrun variables are removed so that `behaviorgpt.train.main` runs as a single
    rank, and torch's thread count is restored afterwards because `main` sets it.
    """
    import torch

    from behaviorgpt.checkpoint import load_checkpoint
    from behaviorgpt.layout import Layout
    from behaviorgpt.train import main

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()

    arguments = ["--profile", "local", "--model-version", model_version,
                 "--set", f"paths.root={root}"]
    for setting in settings:
        arguments += ["--set", setting]
    try:
        main(arguments)
    finally:
        torch.set_num_threads(threads)

    _, description = load_checkpoint(Layout.from_root(root).model_dir(model_version))
    return description
