"""Learning-rate schedule, bf16 autocast, early stopping and the new training keys."""

from __future__ import annotations

import math
import os

import numpy as np
import pyarrow as pa
import pytest
import torch

from behaviorgpt.aggregation import make_strategy
from behaviorgpt.config import ConfigError, load_config
from behaviorgpt.data import EventSequences, make_batch
from behaviorgpt.layout import Layout
from behaviorgpt.losses import TASKS, MultiTaskLoss
from behaviorgpt.model import BehaviorGPT, BehaviorGPTConfig
from behaviorgpt.multitask import Trainer
from behaviorgpt.pipeline import newest_unfinished_version
from behaviorgpt.train import estimate_total_steps, learning_rate_factor
from shards_helper import synthetic_users, train_in_process, write_dataset


def test_schedule_warms_up_then_decays():
    factors = [learning_rate_factor(step, warmup_steps=4, total_steps=20, min_ratio=0.1)
               for step in range(25)]

    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0
    assert math.isclose(factors[12], 0.55)  # halfway through the decay
    assert all(later <= earlier for earlier, later in zip(factors[4:], factors[5:]))
    assert factors[20:] == [pytest.approx(0.1)] * 5


def test_schedule_without_warmup_starts_full():
    assert learning_rate_factor(0, warmup_steps=0, total_steps=10, min_ratio=1.0) == 1.0
    assert learning_rate_factor(9, warmup_steps=0, total_steps=10, min_ratio=1.0) == 1.0


def test_total_steps_follow_largest_rank(tmp_path):
    users, _ = synthetic_users(40, 104, 12, min_length=5, max_length=20, seed=2)
    write_dataset(tmp_path, users, [25, 15], 20, 104, 12)
    layout = Layout.from_root(tmp_path)

    two_ranks = load_config("local", ["train.batch_size=8", "train.epochs=3"])
    capped = load_config("local", ["train.batch_size=8", "train.epochs=3", "train.max_steps=2"])

    assert estimate_total_steps(two_ranks, layout, world_size=2) == 4 * 3  # ceil(25 / 8)
    assert estimate_total_steps(two_ranks, layout, world_size=1) == 5 * 3  # ceil(40 / 8)
    assert estimate_total_steps(capped, layout, world_size=2) == 2 * 3


def make_trainer(precision: str) -> tuple[Trainer, EventSequences]:
    users, _ = synthetic_users(6, 40, 8, min_length=6, max_length=12, seed=3)
    columns = {name: [user[name] for user in users] for name in users[0]}
    sequences = EventSequences.from_arrow(pa.table(columns), 12)
    torch.manual_seed(0)
    model = BehaviorGPT(BehaviorGPTConfig(num_items=40, num_categories=8, max_len=12,
                                          d_model=16, n_layer=1, n_head=2, dropout=0.0))
    strategy = make_strategy("fixed", [1.0] * len(TASKS))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = MultiTaskLoss(model, window_events=3, return_days=0.01)
    return Trainer(loss, strategy, TASKS, optimizer, precision=precision), sequences


def test_bf16_step_keeps_float32_weights():
    results = {}
    for precision in ("fp32", "bf16"):
        trainer, sequences = make_trainer(precision)
        report = trainer.step(make_batch(sequences, np.arange(6), "train"))
        results[precision] = (report.losses, trainer.model.embed.item.weight.detach().clone())

    bf16_losses, bf16_weights = results["bf16"]
    fp32_losses, fp32_weights = results["fp32"]
    assert bf16_weights.dtype == torch.float32
    assert torch.isfinite(bf16_losses).all()
    assert torch.allclose(bf16_losses, fp32_losses, rtol=0.05)
    assert not torch.equal(bf16_weights, fp32_weights)


def test_unknown_precision_names_key():
    with pytest.raises(ConfigError, match="train.precision = 'fp16'.*fp32, bf16"):
        load_config("local", ["train.precision=fp16"])


def test_ratio_above_one_names_bound():
    with pytest.raises(ConfigError, match="train.min_learning_rate_ratio.*at most 1.0"):
        load_config("local", ["train.min_learning_rate_ratio=1.5"])


def test_early_stopping_ends_run(tmp_path, monkeypatch):
    users, _ = synthetic_users(40, 104, 12, min_length=5, max_length=20, seed=2)
    write_dataset(tmp_path, users, [25, 15], 20, 104, 12)

    # A learning rate of 0 never improves validation HR@10 after the first epoch.
    description = train_in_process(tmp_path, monkeypatch, "stopped", "train.epochs=5",
                                   "train.learning_rate=0.0",
                                   "train.early_stopping_patience=2",
                                   "train.loader_workers=0")

    assert description["training"]["epochs_run"] == 3
    assert description["training"]["selected_epoch"] == 1
    assert [record["epoch"] for record in description["training"]["history"]] == [1, 2, 3]


def test_resume_picks_newest_unfinished(tmp_path):
    layout = Layout.from_root(tmp_path)
    for version in ("finished", "older", "newer"):
        (layout.training_checkpoints_dir(version) / "step-000000001").mkdir(parents=True)
    layout.model_dir("finished").mkdir(parents=True)
    os.utime(layout.training_checkpoints_dir("older"), (1_000_000, 1_000_000))

    assert newest_unfinished_version(layout) == "newer"
