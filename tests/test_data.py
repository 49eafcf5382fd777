"""Shard reading, rank assignment and the leave-one-out batch views."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from behaviorgpt.data import (EventSequences, eligible_rows, make_batch, read_manifest,
                              read_rank_sequences, rank_shard_paths, training_batches)
from shards_helper import make_user, write_shards

ITEMS = [10, 11, 12, 13, 14, 15]
CATEGORIES = [4, 5, 4, 6, 4, 7]


def one_user() -> EventSequences:
    user = make_user(ITEMS, CATEGORIES)
    return EventSequences.from_arrow(pa.Table.from_pylist([user]), max_len=50)


def test_train_view_stops_before_validation_event():
    batch = make_batch(one_user(), np.array([0]), "train")

    # Inputs are events 0..2, targets events 1..3; events 4 and 5 stay unseen.
    assert batch.item.tolist() == [[10, 11, 12]]
    assert batch.target_item.tolist() == [[11, 12, 13]]
    assert batch.target_category.tolist() == [[5, 4, 6]]


def test_validation_test_and_score_views():
    sequences = one_user()
    validation = make_batch(sequences, np.array([0]), "validation")
    test = make_batch(sequences, np.array([0]), "test")
    score = make_batch(sequences, np.array([0]), "score")

    assert validation.item.tolist() == [[10, 11, 12, 13]]
    assert validation.target_item.tolist() == [14]
    assert test.item.tolist() == [[10, 11, 12, 13, 14]]
    assert test.target_item.tolist() == [15]
    assert test.target_category.tolist() == [7]
    assert score.item.tolist() == [ITEMS]
    assert score.target_item is None
    assert score.last_positions.tolist() == [5]


def test_batches_are_right_padded():
    users = [make_user([10, 11, 12, 13, 14], [4] * 5, key="a"),
             make_user([20, 21, 22, 23, 24, 25, 26], [5] * 7, key="b")]
    sequences = EventSequences.from_arrow(pa.Table.from_pylist(users), max_len=50)
    batch = make_batch(sequences, np.array([0, 1]), "train")

    assert batch.item.tolist() == [[10, 11, 0, 0], [20, 21, 22, 23]]
    assert batch.target_item.tolist() == [[11, 12, 0, 0], [21, 22, 23, 24]]
    assert batch.lengths.tolist() == [2, 4]


def test_long_rows_keep_most_recent_events():
    user = make_user(list(range(10, 20)), [4] * 10)
    sequences = EventSequences.from_arrow(pa.Table.from_pylist([user]), max_len=4)

    assert sequences.streams["item"].tolist() == [[16, 17, 18, 19]]
    assert sequences.lengths.tolist() == [4]


def test_short_rows_are_not_eligible():
    users = [make_user([10] * n, [4] * n, key=f"u{n}") for n in (1, 2, 3, 4)]
    sequences = EventSequences.from_arrow(pa.Table.from_pylist(users), max_len=50)

    assert eligible_rows(sequences, "train").tolist() == [3]
    assert eligible_rows(sequences, "validation").tolist() == [2, 3]
    assert eligible_rows(sequences, "test").tolist() == [1, 2, 3]
    assert eligible_rows(sequences, "score").tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="needs rows with >= 4 events"):
        make_batch(sequences, np.array([2]), "train")


def test_mismatched_stream_lengths_are_rejected():
    user = make_user([10, 11, 12], [4, 4, 4])
    user["category"] = [4, 4]
    with pytest.raises(ValueError, match="stream 'category' has 2 events but 'item' has 3"):
        EventSequences.from_arrow(pa.Table.from_pylist([user]), max_len=50)


def test_wrong_length_column_is_rejected():
    user = make_user([10, 11, 12], [4, 4, 4])
    user["length"] = 5
    with pytest.raises(ValueError, match="length=5 but the streams have 3 events"):
        EventSequences.from_arrow(pa.Table.from_pylist([user]), max_len=50)


RAW_ID_COLUMNS = ("item_id", "category_id")
"""String columns of a shard row, left out where every list column becomes an int32 array."""


def test_frame_with_numpy_arrays_converts():
    frame = pd.DataFrame({
        "user_key": ["a"],
        **{name: [np.array(values, dtype=np.int32)] for name, values in make_user(
            [10, 11], [4, 5]).items() if isinstance(values, list) and name not in RAW_ID_COLUMNS},
    })
    sequences = EventSequences.from_frame(frame, max_len=50)

    assert sequences.streams["item"].tolist() == [[10, 11]]
    assert sequences.user_keys.tolist() == ["a"]


def test_shards_go_to_rank_modulo_world_size(tmp_path):
    users = [make_user([10 + i] * 5, [4] * 5, key=f"u{i}") for i in range(6)]
    write_shards(tmp_path, users, shard_sizes=[1, 2, 3], max_len=50)
    manifest = read_manifest(tmp_path)

    assert [p.name for p in rank_shard_paths(tmp_path, manifest, 0, 2)] == [
        "part-00000.parquet", "part-00002.parquet"]
    assert read_rank_sequences(tmp_path, 0, 2).user_keys.tolist() == ["u0", "u3", "u4", "u5"]
    assert read_rank_sequences(tmp_path, 1, 2).user_keys.tolist() == ["u1", "u2"]
    assert len(read_rank_sequences(tmp_path, 3, 4)) == 0


def test_training_order_is_seeded_and_complete():
    users = [make_user([10 + i] * 5, [4] * 5, key=f"u{i}") for i in range(10)]
    sequences = EventSequences.from_arrow(pa.Table.from_pylist(users), max_len=50)

    def first_items(epoch: int) -> list[int]:
        return [row[0] for batch in training_batches(sequences, 3, seed=1, epoch=epoch, rank=0)
                for row in batch.item.tolist()]

    assert first_items(0) == first_items(0)
    assert first_items(0) != first_items(1)
    assert sorted(first_items(0)) == list(range(10, 20))
    assert [len(b.item) for b in training_batches(sequences, 3, 1, 0, 0)] == [3, 3, 3, 1]
