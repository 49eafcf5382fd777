"""Two gloo ranks on halves of a batch take the same step as one process on the whole batch.

For every aggregation strategy, two optimizer steps run twice from the same weights:

- one process: step 1 on users 0..7, step 2 on users 8..11;
- two ranks (real processes, gloo on 127.0.0.1): step 1 with rank 0 on users 0..2 and rank 1
  on users 3..7 (uneven, so the ranks have different target counts); step 2 with rank 0 on
  users 8..11 and rank 1 out of batches.

The parameters after each step must match within float32 tolerance.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from behaviorgpt.aggregation import STRATEGIES, make_strategy
from behaviorgpt.data import EventSequences, make_batch
from behaviorgpt.losses import TASKS, MultiTaskLoss
from behaviorgpt.model import BehaviorGPT, BehaviorGPTConfig
from behaviorgpt.multitask import Trainer
from shards_helper import synthetic_users

NUM_ITEMS = 60
NUM_CATEGORIES = 10
MAX_LEN = 16
TASK_WEIGHTS = [1.0, 0.5, 0.25, 1.0, 0.5, 0.5]
STEP_ROWS = {1: {0: np.arange(0, 3), 1: np.arange(3, 8)},
             2: {0: np.arange(8, 12), 1: None}}


def make_sequences() -> EventSequences:
    users, _ = synthetic_users(12, NUM_ITEMS, NUM_CATEGORIES, min_length=9, max_length=MAX_LEN,
                               seed=4)
    columns = {name: [user[name] for user in users] for name in users[0]}
    return EventSequences.from_arrow(pa.table(columns), MAX_LEN)


def make_trainer(strategy_name: str) -> Trainer:
    torch.manual_seed(0)
    config = BehaviorGPTConfig(num_items=NUM_ITEMS, num_categories=NUM_CATEGORIES,
                               max_len=MAX_LEN, d_model=16, n_layer=1, n_head=2, dropout=0.0)
    model = BehaviorGPT(config)
    strategy = make_strategy(strategy_name, TASK_WEIGHTS, seed=3)
    parameters = [p for p in model.parameters() if p.requires_grad] + list(strategy.parameters())
    optimizer = torch.optim.SGD(parameters, lr=0.5)
    return Trainer(MultiTaskLoss(model, window_events=3, return_days=0.01), strategy, TASKS,
                   optimizer, grad_clip_norm=0.0, diagnostics_every=1)


def flat_parameters(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()]).clone()


def run_steps(trainer: Trainer, sequences: EventSequences, rank: int | None) -> list:
    """Take both steps; `rank` None means one process on every row of each step."""
    snapshots = []
    for step in (1, 2):
        if rank is None:
            rows = np.concatenate([r for r in STEP_ROWS[step].values() if r is not None])
        else:
            rows = STEP_ROWS[step][rank]
        batch = None if rows is None else make_batch(sequences, rows, "train")
        report = trainer.step(batch)
        snapshots.append((flat_parameters(trainer), report.weights.float().clone()))
    return snapshots


def ddp_worker(rank: int, port: int, results: dict) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        sequences = make_sequences()
        for name in STRATEGIES:
            snapshots = run_steps(make_trainer(name), sequences, rank)
            if rank == 0:
                results[name] = snapshots
    finally:
        dist.destroy_process_group()


def free_local_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results():
    context = mp.get_context("spawn")
    with context.Manager() as manager:
        results = manager.dict()
        mp.start_processes(ddp_worker, args=(free_local_port(), results), nprocs=2,
                           start_method="spawn", join=True)
        return dict(results)


@pytest.mark.slow
@pytest.mark.parametrize("name", STRATEGIES)
def test_two_ranks_match_one_process(name, ddp_results):
    expected = run_steps(make_trainer(name), make_sequences(), rank=None)

    for step, ((ddp_params, ddp_weights), (one_params, one_weights)) in enumerate(
            zip(ddp_results[name], expected), start=1):
        torch.testing.assert_close(ddp_weights, one_weights, atol=1e-5, rtol=1e-4,
                                   msg=lambda text: f"{name} step {step} weights: {text}")
        torch.testing.assert_close(ddp_params, one_params, atol=1e-5, rtol=1e-4,
                                   msg=lambda text: f"{name} step {step} parameters: {text}")
    # The step moved the weights, so the comparison is not trivially true.
    assert not torch.allclose(expected[0][0], expected[1][0])
