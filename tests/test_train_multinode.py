"""Training as two torchrun "nodes" on loopback gives the same model as one node with two
processes: the ranks, their shards, seeds and collectives are the same, so only the way the
processes found each other differs.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from behaviorgpt.checkpoint import WEIGHTS_FILE
from behaviorgpt.layout import Layout
from shards_helper import synthetic_users, write_dataset
from test_train_ddp import free_local_port

NUM_ITEMS = 304
NUM_CATEGORIES = 14
MAX_LEN = 24
SHARD_SIZES = [50, 40]

TRAIN_SETTINGS = ["train.epochs=2", "train.batch_size=16", "train.num_threads=1",
                  "train.dist_timeout_minutes=3"]


def train_command(root, model_version: str, launcher: list[str]) -> list[str]:
    command = [sys.executable, "-m", "torch.distributed.run", *launcher,
               "-m", "behaviorgpt.train", "--profile", "local", "--model-version", model_version,
               "--set", f"paths.root={root}"]
    for setting in TRAIN_SETTINGS:
        command += ["--set", setting]
    return command


def loopback_environment() -> dict:
    return {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_nodes_match_one_node(tmp_path):
    users, _ = synthetic_users(sum(SHARD_SIZES), NUM_ITEMS, NUM_CATEGORIES, min_length=6,
                               max_length=MAX_LEN, seed=5)
    write_dataset(tmp_path, users, SHARD_SIZES, MAX_LEN, NUM_ITEMS, NUM_CATEGORIES)
    layout = Layout.from_root(tmp_path)

    one_node = subprocess.run(
        train_command(tmp_path, "one-node", ["--nproc_per_node=2", "--master_addr=127.0.0.1",
                                             f"--master_port={free_local_port()}"]),
        env=loopback_environment(), capture_output=True, text=True, timeout=600)
    assert one_node.returncode == 0, one_node.stderr[-4000:]

    # Two agents meet through the c10d rendezvous store on one loopback port. With c10d the
    # agents' order of arrival, not --node-rank, decides which process becomes rank 0; the
    # result does not depend on it because shards, seeds and saving follow the global rank.
    endpoint = f"127.0.0.1:{free_local_port()}"
    nodes = [subprocess.Popen(
        train_command(tmp_path, "two-nodes", ["--nnodes=2", "--nproc_per_node=1",
                                              f"--node-rank={node}", "--rdzv-backend=c10d",
                                              f"--rdzv-endpoint={endpoint}",
                                              "--rdzv-id=multinode-test"]),
        env=loopback_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for node in (0, 1)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-4000:]

    expected = load_file(str(layout.model_dir("one-node") / WEIGHTS_FILE))
    actual = load_file(str(layout.model_dir("two-nodes") / WEIGHTS_FILE))
    assert sorted(actual) == sorted(expected)
    different = [name for name in expected if not torch.equal(actual[name], expected[name])]
    assert different == []
