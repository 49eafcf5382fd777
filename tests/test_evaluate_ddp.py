"""Distributed evaluation through torchrun (two ranks, gloo on 127.0.0.1) on the real Taobao
slice: each rank scores its own shard, and the merged totals equal one process exactly."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from behaviorgpt.config import EvaluateConfig
from behaviorgpt.evaluate import evaluate_leave_one_out


def free_local_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_equal_one_process(real_pipeline, tmp_path):
    layout = real_pipeline
    source = layout.latest_model_dir()
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    shutil.copytree(source, one_dir)
    shutil.copytree(source, two_dir)

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={free_local_port()}",
               "-m", "behaviorgpt.evaluate", "--profile", "local",
               "--set", f"paths.root={layout.root}", "--set", "evaluate.num_threads=1",
               "--model-dir", str(two_dir)]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    two_ranks = json.loads((two_dir / "metrics.json").read_text())

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one_process = evaluate_leave_one_out(one_dir, layout.sequences_dir,
                                             settings=EvaluateConfig(),
                                             cooccurrence_path=layout.cooccurrence_dir)
    finally:
        torch.set_num_threads(threads)
    one_process = json.loads(json.dumps(one_process))

    # The slice has two shards, so each rank scored one of them.
    assert len(list(layout.sequences_dir.glob("shards/part-*.parquet"))) == 2
    assert two_ranks["users"] == one_process["users"] == 815
    # Exact equality: counts are ints and every float64 sum was added in shard order.
    assert two_ranks["segments"] == one_process["segments"]
    assert two_ranks["heads"] == one_process["heads"]
    assert two_ranks == one_process
