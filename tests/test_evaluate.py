"""Ranking metrics, baselines and the inference API on hand-built histories."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from behaviorgpt.checkpoint import save_checkpoint
from behaviorgpt.data import EventSequences
from behaviorgpt.evaluate import (RankingTotals, binary_auc, count_training_items,
                                  evaluate_leave_one_out, mean_average_precision,
                                  most_popular_items, recent_distinct_items)
from behaviorgpt.inference import PREDICTION_COLUMNS, load_model, predict_next
from behaviorgpt.layout import Layout
from behaviorgpt.model import BehaviorGPT, BehaviorGPTConfig
from behaviorgpt.tokens import NUM_RESERVED_IDS, PAD_ID, UNKNOWN_ID
from shards_helper import make_user, write_dataset

NUM_ITEMS = 40
NUM_CATEGORIES = 12


def test_ranking_totals_by_hand():
    totals = RankingTotals()
    top_ids = np.array([[5, 6, 7], [8, 9, 10], [11, 12, 13]])
    totals.add(top_ids, np.array([6, 20, 11]))

    metrics = totals.as_dict(k=3)
    # User 0 hits at rank 1 (gain 1/log2(3)), user 1 misses, user 2 hits at rank 0 (gain 1).
    assert metrics["hr@3"] == pytest.approx(2 / 3)
    assert metrics["ndcg@3"] == pytest.approx((1 + 1 / math.log2(3)) / 3)


def test_unknown_target_is_a_miss():
    totals = RankingTotals()
    totals.add(np.array([[UNKNOWN_ID, 5]]), np.array([UNKNOWN_ID]))

    assert totals.hits == 0
    assert totals.users == 1


def test_recent_distinct_items_by_hand():
    items = np.array([10, 11, 10, 12, UNKNOWN_ID, 13, 14])

    # Events before the test event, newest first: 13, unknown, 12, 10, 11, 10.
    assert recent_distinct_items(items, num_inputs=6, k=3).tolist() == [13, 12, 10]
    assert recent_distinct_items(items, num_inputs=6, k=5).tolist() == [13, 12, 10, 11, PAD_ID]


def test_popularity_counts_training_positions_only():
    users = [make_user([10, 10, 11, 12, 13], [4] * 5, key="a"),
             make_user([11, 12, 14, 15], [4] * 4, key="b")]
    sequences = EventSequences.from_arrow(pa.Table.from_pylist(users), max_len=50)
    counts = count_training_items([sequences], NUM_ITEMS)

    # Training positions are the first length-2 events: 10, 10, 11 and 11, 12.
    assert counts[10] == 2
    assert counts[11] == 2
    assert counts[12] == 1
    assert counts[13] == 0
    assert counts[14] == 0
    assert most_popular_items(counts, 3).tolist() == [10, 11, 12]


HAND_USERS = [
    make_user([10, 11, 12, 10, 11], [4, 5, 6, 4, 5], key="a"),
    make_user([20, 21, 20, 22], [4, 5, 4, 6], key="b"),
    make_user([30, 31, UNKNOWN_ID], [4, 5, UNKNOWN_ID], key="c"),
]


@pytest.fixture()
def hand_model(tmp_path):
    """A randomly initialised model saved next to shards of the three hand-built users."""
    sequences_dir = write_dataset(tmp_path, HAND_USERS, [2, 1], 16, NUM_ITEMS, NUM_CATEGORIES)
    torch.manual_seed(0)
    model = BehaviorGPT(BehaviorGPTConfig(num_items=NUM_ITEMS, num_categories=NUM_CATEGORIES,
                                          max_len=16, d_model=16, n_layer=1, n_head=2))
    layout = Layout.from_root(tmp_path)
    model_dir = save_checkpoint(model.eval(), layout, "v1", layout.vocab_dir, {})
    return model_dir, sequences_dir


def test_evaluate_baselines_by_hand(hand_model):
    model_dir, sequences_dir = hand_model
    metrics = evaluate_leave_one_out(model_dir, sequences_dir)

    # Recent items: user a's target 11 is third in [10, 12, 11]; b's 22 and c's unknown miss.
    assert metrics["recent_items"]["hr@10"] == pytest.approx(1 / 3)
    assert metrics["recent_items"]["ndcg@10"] == pytest.approx(0.5 / 3)
    # Most popular: items 10, 11, 12, 20, 21, 30 each occur once at training positions, so
    # ties keep id order and user a's target 11 is second.
    assert metrics["most_popular"]["hr@10"] == pytest.approx(1 / 3)
    assert metrics["most_popular"]["ndcg@10"] == pytest.approx(1 / math.log2(3) / 3)
    assert metrics["users"] == 3
    assert json.loads((model_dir / "metrics.json").read_text()) == metrics


def test_evaluate_model_matches_predict_next(hand_model):
    # Evaluation and scoring must rank the same way: score the test prefixes with
    # predict_next and recount the hits.
    model_dir, sequences_dir = hand_model
    metrics = evaluate_leave_one_out(model_dir, sequences_dir)

    frame = pd.DataFrame([{**user, **{name: user[name][:-1] for name in
                                      ("item", "category", "event_type", "time_gap",
                                       "session_start", "event_time")},
                           "length": user["length"] - 1} for user in HAND_USERS])
    predictions = predict_next(load_model(model_dir), frame, top_k=10, batch_size=2)
    hits = sum(f"i{user['item'][-1]}" in top for user, top in
               zip(HAND_USERS, predictions["top_item_ids"]))

    assert metrics["model"]["hr@10"] == pytest.approx(hits / 3)


def test_predict_next_output_contract(hand_model):
    model_dir, sequences_dir = hand_model
    loaded = load_model(model_dir)
    frame = pq.read_table(sequences_dir / "part-00000.parquet").to_pandas()
    frame.index = [7, 3]

    predictions = predict_next(loaded, frame, top_k=5, batch_size=1)

    assert list(predictions.columns) == list(PREDICTION_COLUMNS)
    assert predictions.index.tolist() == [7, 3]
    reserved = {f"i{i}" for i in range(NUM_RESERVED_IDS)} | {None}
    for row in predictions.itertuples():
        assert len(row.top_item_ids) == 5
        assert not reserved & set(row.top_item_ids)
        assert row.top_item_scores == sorted(row.top_item_scores, reverse=True)
        assert len(row.top_category_ids) == 5
        assert all(raw.startswith("c") for raw in row.top_category_ids)
        assert len(row.embedding) == 16
        assert 0.0 < row.purchase_propensity < 1.0
        assert 0.0 < row.return_propensity < 1.0


def test_predict_next_caps_top_k(hand_model):
    model_dir, sequences_dir = hand_model
    frame = pq.read_table(sequences_dir / "part-00000.parquet").to_pandas()

    predictions = predict_next(load_model(model_dir), frame, top_k=1000, batch_size=8)

    assert len(predictions["top_item_ids"].iloc[0]) == NUM_ITEMS - NUM_RESERVED_IDS
    assert len(predictions["top_category_ids"].iloc[0]) == NUM_CATEGORIES - NUM_RESERVED_IDS


def test_predict_next_empty_frame(hand_model):
    model_dir, sequences_dir = hand_model
    frame = pq.read_table(sequences_dir / "part-00000.parquet").to_pandas()

    empty = predict_next(load_model(model_dir), frame.iloc[:0], top_k=5, batch_size=8)

    assert len(empty) == 0
    assert list(empty.columns) == list(PREDICTION_COLUMNS)


def test_binary_auc_hand_case():
    # Pairs (positive, negative): (0.8, 0.1) win, (0.8, 0.4) win, (0.35, 0.1) win,
    # (0.35, 0.4) loss: 3 of 4.
    auc = binary_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))

    assert auc == pytest.approx(0.75)


def test_binary_auc_ties_and_one_class():
    assert binary_auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)
    assert np.isnan(binary_auc(np.array([0.5, 0.7]), np.array([1, 1])))


def test_mean_average_precision_hand_case():
    scores = np.array([[0.9, 0.8, 0.7], [0.1, 0.2, 0.3], [0.5, 0.4, 0.3]])
    labels = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 0]])

    # Row 0: hits at ranks 1 and 3, AP = (1/1 + 2/3) / 2; row 1: hit at rank 3, AP = 1/3;
    # row 2 has no positive and is skipped.
    expected = ((1 + 2 / 3) / 2 + 1 / 3) / 2
    assert mean_average_precision(scores, labels) == pytest.approx(expected)


def test_rank_sums_by_hand():
    from behaviorgpt.metrics import RankSums, target_ranks

    lists = np.array([[5, 6, 7], [8, 9, 10], [11, 12, 13], [UNKNOWN_ID, 14, 15]])
    ranks = target_ranks(lists, np.array([7, 20, 11, UNKNOWN_ID]))
    sums = RankSums((1, 3))
    sums.add(ranks)
    metrics = sums.as_dict()

    assert ranks.tolist() == [2, -1, 0, -1]
    assert metrics["hr@1"] == pytest.approx(1 / 4)
    assert metrics["hr@3"] == pytest.approx(2 / 4)
    assert metrics["mrr@3"] == pytest.approx((1 / 3 + 1) / 4)
    assert metrics["ndcg@3"] == pytest.approx((0.5 + 1) / 4)


def test_recall_and_precision_by_hand():
    from behaviorgpt.metrics import average_precisions, recall_at_k

    scores = np.array([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4], [0.5, 0.4, 0.3, 0.2]])
    labels = np.array([[1, 0, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]])

    # Row 0 ranks columns 0, 1, 2, 3: 2 of its 3 positives in the top 2 ... top 3.
    assert recall_at_k(scores, labels, 2).tolist() == pytest.approx([1 / 3, 0.0])
    assert recall_at_k(scores, labels, 3).tolist() == pytest.approx([2 / 3, 0.0])
    assert average_precisions(scores, labels).tolist() == pytest.approx(
        [(1 + 2 / 3 + 3 / 4) / 3, 1 / 4])


def test_binary_head_metrics_by_hand():
    from behaviorgpt.metrics import binary_head_metrics

    probabilities = np.array([0.05, 0.15, 0.85, 0.95])
    logits = np.log(probabilities / (1 - probabilities))
    labels = np.array([0.0, 1.0, 1.0, 1.0])

    head = binary_head_metrics([logits[:2], logits[2:]], [labels[:2], labels[2:]], bins=2)

    # Bin [0, 0.5): mean 0.10, rate 0.5; bin [0.5, 1]: mean 0.90, rate 1.0.
    assert head["auc"] == pytest.approx(1.0)
    assert head["ece"] == pytest.approx((2 * 0.4 + 2 * 0.1) / 4)
    assert [row["count"] for row in head["calibration"]] == [2, 2]
    assert head["calibration"][0]["observed_rate"] == pytest.approx(0.5)
    expected_loss = -np.mean(np.log([0.95, 0.15, 0.85, 0.95]))
    assert head["log_loss"] == pytest.approx(expected_loss)


def test_user_segments_by_hand():
    from behaviorgpt.evaluate import user_segments

    one_session = make_user([10, 11, 12], [4, 4, 4], key="new")
    two_sessions = make_user([10, 11, 12, 13, 14, 15, 16], [4] * 7, key="back")
    two_sessions["session_start"] = [1, 0, 0, 1, 0, 0, 0]
    # The second session starts with the test target itself: still a returning user.
    target_starts = make_user([10, 11, 12], [4, 4, 4], key="target")
    target_starts["session_start"] = [1, 0, 1]
    sequences = EventSequences.from_arrow(
        pa.Table.from_pylist([one_session, two_sessions, target_starts]), max_len=50)

    segments = user_segments(sequences, np.arange(3))

    assert segments["new_user"].tolist() == [True, False, False]
    assert segments["returning_user"].tolist() == [False, True, True]
    assert segments["history_1_4"].tolist() == [True, False, True]
    assert segments["history_5_19"].tolist() == [False, True, False]


def test_drop_seen_and_cooccurrence_lists():
    from behaviorgpt.baselines import CooccurrenceTable, cooccurrence_lists, drop_seen

    table = CooccurrenceTable(previous_items=np.array([10, 10, 11]),
                              next_items=np.array([12, 13, 10]))
    popular = np.array([13, 14, 15])
    lists = cooccurrence_lists(table, np.array([10, 20]), popular, width=4)

    # Item 10's neighbours, then popular items not already listed; item 20 has none.
    assert lists.tolist() == [[12, 13, 14, 15], [13, 14, 15, PAD_ID]]
    histories = np.array([[12, PAD_ID], [15, 14]])
    assert drop_seen(lists, histories, width=2).tolist() == [[13, 14], [13, PAD_ID]]


def test_exclude_seen_makes_seen_target_a_miss(hand_model):
    from behaviorgpt.config import EvaluateConfig

    model_dir, sequences_dir = hand_model
    metrics = evaluate_leave_one_out(model_dir, sequences_dir,
                                     settings=EvaluateConfig(exclude_seen=True))

    # User a's target 11 is in its history and c's is unknown, so both miss; b's new item 22
    # is still ranked, and the 36 real items all fit in a top 50.
    assert metrics["model"]["hr@50"] == pytest.approx(1 / 3)
    assert metrics["most_popular"]["hr@50"] == pytest.approx(1 / 3)
    assert metrics["recent_items"]["hr@50"] == 0.0
    assert metrics["exclude_seen"] is True


def test_metric_rows_cover_segments(hand_model):
    from behaviorgpt.evaluate import metric_rows

    model_dir, sequences_dir = hand_model
    metrics = evaluate_leave_one_out(model_dir, sequences_dir)
    rows = metric_rows(metrics)
    keyed = {(row["task"], row["metric"], row["segment"], row["k"], row["baseline"]): row
             for row in rows}

    assert len(keyed) == len(rows)
    assert keyed[("next_item", "hr", "all", 10, "recent_items")]["value"] == pytest.approx(1 / 3)
    assert keyed[("next_item", "users", "new_user", None, None)]["value"] == 3
    assert keyed[("next_item", "ndcg", "all", 50, None)]["is_baseline"] is False
    assert {row["task"] for row in rows} == {"next_item", "purchase", "return",
                                             "category_interest"}


def test_evaluate_config_rejects_bad_values():
    from behaviorgpt.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"evaluate.calibration_bins = 1 is invalid.*>= 2"):
        load_config("local", ["evaluate.calibration_bins=1"])
    with pytest.raises(ConfigError, match=r"evaluate.exclude_seen = 'maybe'.*true or false"):
        load_config("local", ["evaluate.exclude_seen=maybe"])
