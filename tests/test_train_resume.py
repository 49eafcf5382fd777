"""A two-rank run that loses a rank mid-epoch and resumes ends with the same weights as a run
that never stopped: once resumed by a second launch with `--resume`, once restarted by torchrun
itself (`--max-restarts=1`).

The interruption is real: the fault hook of `behaviorgpt.train` makes rank 1 call `os._exit(1)`
after a chosen step, and torchrun tears the group down. The runs use FAMO (optimizer state in
the strategy) and dropout (random generator state per rank), so every part of the checkpoint
matters to the result.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from behaviorgpt.checkpoint import WEIGHTS_FILE
from behaviorgpt.layout import Layout
from behaviorgpt.train_state import list_training_checkpoints
from shards_helper import synthetic_users, write_dataset
from test_train_ddp import free_local_port
from test_train_multinode import loopback_environment

NUM_ITEMS = 204
NUM_CATEGORIES = 12
MAX_LEN = 16
SHARD_SIZES = [50, 40]
"""Batches of 8: rank 0 has 7 batches per epoch and rank 1 has 5, so an epoch is 7 steps."""

SETTINGS = ["train.epochs=2", "train.batch_size=8", "train.num_threads=1",
            "train.dist_timeout_minutes=2", "train.aggregation=famo", "train.checkpoint_every=4",
            "train.keep_checkpoints=2", "train.warmup_steps=3", "train.log_every=2",
            "model.d_model=16", "model.n_layer=1", "model.n_head=2"]
FAULT_STEP = 10
"""Rank 1 dies after step 10, in epoch 2; the newest checkpoint then is step 8."""


def torchrun(root, model_version: str, *extra: str, restarts: int = 0,
             fault: bool = False) -> subprocess.CompletedProcess:
    # The c10d rendezvous starts a new round for each restart, with fresh store keys. The
    # static one (--master_addr/--master_port) keeps the first attempt's keys in torch 2.x, so
    # a restarted gloo group can read a dead rank's address and fail to connect.
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_local_port()}",
               f"--max-restarts={restarts}", "--monitor-interval=0.5",
               "-m", "behaviorgpt.train", "--profile", "local", "--model-version", model_version,
               "--set", f"paths.root={root}", *extra]
    for setting in SETTINGS:
        command += ["--set", setting]
    environment = loopback_environment()
    if fault:
        environment.update(BEHAVIORGPT_FAULT_EXIT_AFTER_STEP=str(FAULT_STEP),
                           BEHAVIORGPT_FAULT_RANK="1")
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Warehouse with the shards and a model trained without interruption."""
    root = tmp_path_factory.mktemp("resume")
    users, _ = synthetic_users(sum(SHARD_SIZES), NUM_ITEMS, NUM_CATEGORIES, min_length=5,
                               max_length=MAX_LEN, seed=9)
    write_dataset(root, users, SHARD_SIZES, MAX_LEN, NUM_ITEMS, NUM_CATEGORIES)
    result = torchrun(root, "straight")
    assert result.returncode == 0, result.stderr[-4000:]
    return Layout.from_root(root)


def different_tensors(layout: Layout, version: str) -> list[str]:
    """Names of the tensors that differ from the uninterrupted run's, in the saved (best
    epoch's) weights and in the last step's weights of the final training checkpoint."""
    different = []
    for folder, file in ((layout.model_dir, WEIGHTS_FILE),
                         (lambda name: final_checkpoint(layout, name), "model.safetensors")):
        expected = load_file(str(folder("straight") / file))
        actual = load_file(str(folder(version) / file))
        assert sorted(actual) == sorted(expected)
        different += [f"{file}:{name}" for name in expected
                      if not torch.equal(actual[name], expected[name])]
    return different


def final_checkpoint(layout: Layout, version: str):
    return list_training_checkpoints(layout.training_checkpoints_dir(version))[-1]


def training_summary(layout: Layout, version: str) -> dict:
    path = layout.model_dir(version) / "model_config.json"
    return json.loads(path.read_text(encoding="utf-8"))["training"]


@pytest.mark.slow
def test_resume_matches_uninterrupted(reference):
    layout = reference

    crashed = torchrun(layout.root, "resumed", fault=True)
    assert crashed.returncode != 0
    assert "fault injection: rank 1 exits after step 10" in crashed.stderr
    steps = [folder.name for folder in
             list_training_checkpoints(layout.training_checkpoints_dir("resumed"))]
    assert steps == ["step-000000007", "step-000000008"]
    assert not layout.model_dir("resumed").exists()

    resumed = torchrun(layout.root, "resumed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed model resumed from" in resumed.stderr

    assert different_tensors(layout, "resumed") == []
    straight, again = training_summary(layout, "straight"), training_summary(layout, "resumed")
    assert again["steps"] == straight["steps"] == 14
    for before, after in zip(straight["history"], again["history"]):
        assert after["loss"] == before["loss"]
        assert after["validation_hr@10"] == before["validation_hr@10"]
        assert after["train_sequences"] == before["train_sequences"]


@pytest.mark.slow
def test_torchrun_restart_resumes(reference):
    layout = reference

    result = torchrun(layout.root, "restarted", restarts=1, fault=True)

    assert result.returncode == 0, result.stderr[-4000:]
    assert "fault injection: rank 1 exits after step 10" in result.stderr
    assert "resumed model restarted from" in result.stderr
    assert different_tensors(layout, "restarted") == []


def test_metrics_file_has_steps_and_epochs(reference):
    layout = reference
    records = [json.loads(line) for line in
               (layout.model_dir("straight") / "metrics.jsonl").read_text().splitlines()]

    steps = [record["step"] for record in records if record["kind"] == "step"]
    epochs = [record["epoch"] for record in records if record["kind"] == "epoch"]
    assert steps == [2, 4, 6, 8, 10, 12, 14]
    assert epochs == [1, 2]
    assert all(record["examples_per_s"] > 0 for record in records if record["kind"] == "step")
    assert list((layout.model_dir("straight") / "tensorboard").glob("events.out.tfevents.*"))
