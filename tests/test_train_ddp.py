"""Real two-process DDP training through torchrun (gloo on 127.0.0.1), and a one-process run.

The synthetic users repeat recent items and prefer one category, so the trained model must
beat the most-popular baseline and rank each user's dominant category highly.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from behaviorgpt.checkpoint import load_checkpoint
from behaviorgpt.evaluate import evaluate_leave_one_out
from behaviorgpt.inference import load_model, predict_next
from behaviorgpt.layout import Layout
from shards_helper import synthetic_users, train_in_process, write_dataset

NUM_ITEMS = 1004
NUM_CATEGORIES = 24
MAX_LEN = 40
SHARD_SIZES = [150, 90, 60]
"""Rank 0 reads shards 0 and 2 (210 users), rank 1 reads shard 1 (90 users)."""

TRAIN_SETTINGS = ["train.epochs=6", "train.batch_size=32", "train.num_threads=1",
                  "train.dist_timeout_minutes=3"]


def free_local_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_torchrun(root, settings: list[str], model_version: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={free_local_port()}",
               "-m", "behaviorgpt.train", "--profile", "local", "--model-version", model_version,
               "--set", f"paths.root={root}"]
    for setting in settings:
        command += ["--set", setting]
    # Keep gloo on the loopback interface; the test machine needs no other network.
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    users, dominant = synthetic_users(sum(SHARD_SIZES), NUM_ITEMS, NUM_CATEGORIES,
                                      min_length=10, max_length=MAX_LEN, seed=11)
    write_dataset(root, users, SHARD_SIZES, MAX_LEN, NUM_ITEMS, NUM_CATEGORIES)

    result = run_torchrun(root, TRAIN_SETTINGS, model_version="ddp-test")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return Layout.from_root(root), dominant, result


def test_ddp_run_writes_loadable_checkpoint(trained):
    layout, _, _ = trained
    model_dir = layout.model_dir("ddp-test")

    model, description = load_checkpoint(model_dir)

    assert layout.candidate_model_dir() == model_dir
    assert (model_dir / "model.safetensors").is_file()
    assert description["model"]["num_items"] == NUM_ITEMS
    assert description["training"]["world_size"] == 2
    assert len(description["training"]["history"]) == 6
    assert not model.training
    assert 0 < description["training"]["history"][-1]["mfu"] < 1
    diagnostics = (model_dir / "diagnostics.jsonl").read_text().splitlines()
    assert len(diagnostics) == 1  # 42 steps, diagnostics every 50 from step 0
    assert json.loads(diagnostics[0])["tasks"][0] == "next_item"


def test_ranks_with_unequal_shards_finish(trained):
    layout, _, result = trained
    training = json.loads((layout.model_dir("ddp-test") / "model_config.json").read_text())[
        "training"]

    # 210 and 90 users with >= 4 events, in batches of 32: 7 and 3 batches per epoch.
    assert training["batches_per_rank_per_epoch"] == [7, 3]
    assert training["train_sequences_per_epoch"] == sum(SHARD_SIZES)
    # Only rank 0 logs the epoch lines.
    assert result.stderr.count("epoch 6/6") == 1


def test_trained_model_beats_most_popular(trained):
    layout, _, _ = trained
    metrics = evaluate_leave_one_out(layout.model_dir("ddp-test"), layout.sequences_dir)

    assert metrics["users"] == sum(SHARD_SIZES)
    assert metrics["model"]["hr@10"] > metrics["most_popular"]["hr@10"] + 0.1
    assert metrics["model"]["ndcg@10"] > metrics["most_popular"]["ndcg@10"]


def test_category_head_ranks_dominant_category(trained):
    layout, dominant, _ = trained
    loaded = load_model(layout.model_dir("ddp-test"))
    frame = pd.concat([pq.read_table(layout.sequences_dir / f"part-{i:05d}.parquet").to_pandas()
                       for i in range(len(SHARD_SIZES))], ignore_index=True)

    predictions = predict_next(loaded, frame, top_k=3, batch_size=64)
    in_top3 = [f"c{category}" in top
               for category, top in zip(dominant, predictions["top_category_ids"])]

    # Chance would be 3 in 20 real categories; users draw 80% of new items from theirs.
    assert np.mean(in_top3) > 0.6


def test_single_process_run_without_torchrun(tmp_path, monkeypatch):
    users, _ = synthetic_users(40, 104, 12, min_length=5, max_length=20, seed=2)
    write_dataset(tmp_path, users, [25, 15], 20, 104, 12)

    description = train_in_process(tmp_path, monkeypatch, "solo", "train.epochs=1")

    assert description["training"]["world_size"] == 1
    assert description["training"]["train_sequences_per_epoch"] == 40


def test_max_steps_caps_each_epoch(tmp_path, monkeypatch):
    users, _ = synthetic_users(40, 104, 12, min_length=5, max_length=20, seed=2)
    write_dataset(tmp_path, users, [25, 15], 20, 104, 12)

    description = train_in_process(tmp_path, monkeypatch, "capped", "train.epochs=2",
                                   "train.batch_size=8", "train.max_steps=2")

    # 40 users in batches of 8 would be 5 steps; the cap stops each epoch after 2.
    assert description["training"]["batches_per_rank_per_epoch"] == [2]
    assert description["training"]["train_sequences_per_epoch"] == 16
    assert description["training"]["max_steps"] == 2
