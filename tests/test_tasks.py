"""Next-window labels, the extra heads, the sampled item softmax and the trainer's records."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from behaviorgpt.aggregation import STRATEGIES, make_strategy
from behaviorgpt.config import AGGREGATION_STRATEGIES
from behaviorgpt.data import EventSequences, make_batch, training_batches
from behaviorgpt.losses import TASKS, MultiTaskLoss, approximate_gap_seconds, window_labels
from behaviorgpt.model import BehaviorGPT, BehaviorGPTConfig
from behaviorgpt.multitask import Trainer, estimate_step_flops
from behaviorgpt.tokens import EVENT_TYPE_IDS
from shards_helper import make_user, synthetic_users

NUM_ITEMS = 60
NUM_CATEGORIES = 10
MAX_LEN = 12
PURCHASE = EVENT_TYPE_IDS["purchase"]
VIEW = EVENT_TYPE_IDS["view"]


def small_model(**overrides) -> BehaviorGPT:
    torch.manual_seed(0)
    config = BehaviorGPTConfig(num_items=NUM_ITEMS, num_categories=NUM_CATEGORIES,
                               max_len=MAX_LEN, d_model=16, n_layer=1, n_head=2, dropout=0.0,
                               **overrides)
    return BehaviorGPT(config)


def sequences_of(users: list[dict]) -> EventSequences:
    columns = {name: [user[name] for user in users] for name in users[0]}
    return EventSequences.from_arrow(pa.table(columns), MAX_LEN)


def hand_user() -> dict:
    # Sessions start at events 0 and 3; event 2 is a purchase. Gaps are bucket 10 (about
    # 361 s each, see approximate_gap_seconds).
    user = make_user([10, 11, 12, 13, 14, 15], [4, 5, 6, 5, 7, 8],
                     event_types=[VIEW, VIEW, PURCHASE, VIEW, VIEW, VIEW])
    user["session_start"] = [1, 0, 0, 1, 0, 0]
    return user


def test_gap_seconds_bucket_middle():
    seconds = approximate_gap_seconds(torch.tensor([0, 1, 2, 10]))

    assert seconds[:2].tolist() == [0.0, 0.0]
    assert float(seconds[2]) == np.sqrt(2) - 1
    assert abs(float(seconds[3]) - (2 ** 8.5 - 1)) < 1e-9


def test_window_labels_all_cutoffs():
    batch = make_batch(sequences_of([hand_user()]), np.array([0]), "score")

    # Horizon 800 s: the session at event 3 starts 361 s after cutoff 2 and 722 s after
    # cutoff 1, but 1083 s after cutoff 0; cutoff 3 has no later session.
    labels = window_labels(batch, NUM_CATEGORIES, window_events=2, return_days=800 / 86_400,
                           all_cutoffs=True)

    assert labels.rows.tolist() == [0, 0, 0, 0]
    assert labels.positions.tolist() == [0, 1, 2, 3]
    assert labels.purchase.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert labels.returned.tolist() == [0.0, 1.0, 1.0, 0.0]
    engaged = [sorted(np.flatnonzero(row).tolist()) for row in labels.category_interest]
    assert engaged == [[5, 6], [5, 6], [5, 7], [7, 8]]


def test_window_labels_last_cutoff_only():
    short = make_user([10, 11], [4, 5], key="short")
    batch = make_batch(sequences_of([hand_user(), short]), np.array([0, 1]), "score")

    labels = window_labels(batch, NUM_CATEGORIES, window_events=2, return_days=1.0,
                           all_cutoffs=False)

    # The short user has no event 2 positions before its end, so it has no cutoff.
    assert labels.rows.tolist() == [0]
    assert labels.positions.tolist() == [3]


def test_untied_output_embedding():
    model = small_model(tie_item_embeddings=False)
    states = torch.randn(3, 16)

    with torch.no_grad():
        model.item_output.zero_()
    logits = model.real_item_logits(states)

    assert "item_output" in model.state_dict()
    assert torch.count_nonzero(logits) == 0
    assert small_model().item_output is None


def test_sampled_softmax_used_in_training_only():
    model = small_model(sampled_softmax_threshold=10, sampled_negatives=8)
    batch = next(training_batches(
        sequences_of(synthetic_users(4, NUM_ITEMS, NUM_CATEGORIES, 6, MAX_LEN, seed=1)[0]),
        batch_size=4, seed=0, epoch=0, rank=0))

    model.train()
    assert model.uses_sampled_softmax()
    losses = MultiTaskLoss(model, window_events=2)(batch)
    losses["next_item"].backward()
    model.eval()

    assert not model.uses_sampled_softmax()
    assert torch.isfinite(losses["next_item"])
    assert float(losses["next_item"].detach()) > 0
    assert model.embed.item.weight.grad is not None


def test_sampled_softmax_log_q_and_masking():
    model = small_model(sampled_softmax_threshold=10, sampled_negatives=1)
    states = torch.zeros(3, 16)
    targets = torch.tensor([20, 20, 30])
    real_items = NUM_ITEMS - 4
    torch.manual_seed(7)
    uniform = int(torch.randint(real_items, (1,))) + 4

    torch.manual_seed(7)
    with torch.no_grad():
        model.item_bias.zero_()
        log_probability = model.sampled_item_log_probability(states, targets)

    # Zero states and biases: each candidate's logit is -log(expected count), with counts
    # 2 + 1/56 for item 20 (two in-batch targets), 1 + 1/56 for item 30. Row 0 masks the
    # other copy of item 20 (and the uniform draw when it is item 20 too).
    def expected_count(item: int) -> float:
        return int((targets == item).sum()) + 1 / real_items

    columns = [20, 20, 30, uniform]
    logits = torch.tensor([-np.log(expected_count(item)) for item in columns])
    row0 = logits.clone()
    row0[[index for index in range(1, 4) if columns[index] == 20]] = -torch.inf
    expected_row0 = float(row0[0] - torch.logsumexp(row0, 0))
    assert float(log_probability[0]) == pytest.approx(expected_row0, abs=1e-5)
    assert log_probability.shape == (3,)


def test_config_lists_every_strategy():
    assert AGGREGATION_STRATEGIES == STRATEGIES


def test_trainer_writes_diagnostics(tmp_path):
    model = small_model()
    strategy = make_strategy("upgrad", [1.0] * len(TASKS))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    path = tmp_path / "diagnostics.jsonl"
    trainer = Trainer(MultiTaskLoss(model, window_events=2), strategy, TASKS, optimizer,
                      diagnostics_every=2, diagnostics_path=path)
    users, _ = synthetic_users(12, NUM_ITEMS, NUM_CATEGORIES, 6, MAX_LEN, seed=2)

    for batch in training_batches(sequences_of(users), batch_size=4, seed=0, epoch=0, rank=0):
        report = trainer.step(batch)
    assert trainer.step(None) is None

    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [record["step"] for record in records] == [0, 2]
    first = records[0]
    assert first["tasks"] == list(TASKS)
    assert len(first["gradient_norm"]) == len(TASKS)
    assert all(norm > 0 for norm in first["gradient_norm"])
    assert np.allclose(np.diag(first["cosine"]), 1.0)
    assert np.allclose(first["cosine"], np.array(first["cosine"]).T)
    assert len(first["weight"]) == len(TASKS)
    assert report.flops > 0


def test_step_flops_scale_with_vocabulary():
    batch = make_batch(sequences_of([hand_user()]), np.array([0]), "train")

    small = estimate_step_flops(small_model(), batch)
    model = small_model()
    model.config = BehaviorGPTConfig(**{**model.config.to_dict(), "num_items": 1004})
    large = estimate_step_flops(model, batch)

    # One target more than 944 extra output columns, 6 FLOPs each per dimension.
    assert large - small == 1 * 6 * 16 * (1004 - NUM_ITEMS) * int(
        (batch.target_item >= 4).sum())
