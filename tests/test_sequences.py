"""Vocabulary and token sequences built from hand-made sessions."""

import json

import pyarrow.parquet as pq
import pytest

from behaviorgpt import tokens
from behaviorgpt.config import load_config
from behaviorgpt.layout import Layout
from behaviorgpt.sequences import build_sequences, example_settings
from behaviorgpt.sessions import sessionize

BASE = 1_511_658_000


def make_sessions(spark, rows):
    events = spark.createDataFrame(
        [(f"e{index:03d}", user, item, category, event_type, ts)
         for index, (user, item, category, event_type, ts) in enumerate(rows)],
        "event_id string, user_key string, item_id string, category_id string, "
        "event_type string, event_ts long")
    return sessionize(events, gap_seconds=1800)


def read_rows(layout):
    manifest = json.loads((layout.sequences_dir / "manifest.json").read_text())
    rows = []
    for shard in manifest["shards"]:
        rows += pq.read_table(layout.sequences_dir / shard["file"]).to_pylist()
    return manifest, {row["user_key"]: row for row in rows}


def test_tokens_and_vocabulary(spark, tmp_path):
    layout = Layout.from_root(tmp_path)
    sessions = make_sessions(spark, [
        ("u1", "A", "X", "view", BASE),
        ("u1", "A", "X", "cart", BASE + 10),
        ("u1", "B", "Y", "view", BASE + 10_000),  # new session after a 10,000 s gap
        ("u1", "C", "Z", "purchase", BASE + 10_001),  # held-out test event: C not in vocab
        ("u2", "B", "Y", "view", BASE),
        ("u2", "A", "X", "fav", BASE + 1),
    ])

    manifest, rows = read_rows_after_build(spark, sessions, layout, max_len=10)

    # Counts exclude each user's last event: A twice, B once from u1; u2's last (A) excluded.
    items = pq.read_table(layout.vocab_dir / "items.parquet").to_pylist()
    assert [(row["raw_id"], row["token_id"], row["count"]) for row in items] == [
        ("A", 4, 2), ("B", 5, 2)]
    assert manifest["rows"] == 2

    user = rows["u1"]
    assert user["item"] == [4, 4, 5, tokens.UNKNOWN_ID]
    assert user["event_type"] == [tokens.EVENT_TYPE_IDS[name]
                                  for name in ("view", "cart", "view", "purchase")]
    assert user["session_start"] == [1, 0, 1, 0]
    assert user["time_gap"] == [tokens.FIRST_EVENT_GAP_ID, tokens.time_gap_id(10),
                                tokens.time_gap_id(9990), tokens.time_gap_id(1)]
    assert user["event_time"] == [BASE, BASE + 10, BASE + 10_000, BASE + 10_001]
    assert user["length"] == 4


def test_max_len_keeps_most_recent(spark, tmp_path):
    layout = Layout.from_root(tmp_path)
    sessions = make_sessions(spark, [("u1", f"I{n}", "X", "view", BASE + n) for n in range(7)])

    _, rows = read_rows_after_build(spark, sessions, layout, max_len=3)

    user = rows["u1"]
    assert user["length"] == 3
    assert user["event_time"] == [BASE + 4, BASE + 5, BASE + 6]
    # The first kept event still has a gap to the dropped event before it.
    assert user["time_gap"][0] == tokens.time_gap_id(1)


def read_rows_after_build(spark, sessions, layout, *, max_len):
    build_sequences(spark, sessions, layout, max_len=max_len, min_item_count=1, num_shards=2)
    return read_rows(layout)


@pytest.mark.slow
def test_frozen_vocabulary_and_examples(spark, tmp_path):
    first = Layout.from_root(tmp_path / "first")
    sessions = make_sessions(spark, [
        ("u1", "A", "X", "view", BASE),
        ("u1", "A", "X", "cart", BASE + 10),
        ("u1", "B", "Y", "view", BASE + 20),
        ("u1", "B", "Y", "purchase", BASE + 30),
        ("u1", "C", "Z", "view", BASE + 40),
        ("u2", "B", "Y", "view", BASE),
        ("u2", "A", "X", "fav", BASE + 1),
    ])
    build_sequences(spark, sessions, first, max_len=10, min_item_count=2, num_shards=2,
                    oov_buckets=3, rows_per_row_group=1)

    vocab = json.loads((first.vocab_dir / "manifest.json").read_text())
    assert vocab["items_in_vocabulary"] == 2  # A and B; C is seen once
    assert vocab["num_items"] == tokens.NUM_RESERVED_IDS + 2 + 3
    assert vocab["version"] == vocab["hash"][:12]
    _, rows = read_rows(first)
    bucket_of_c = rows["u1"]["item"][-1]
    assert 6 <= bucket_of_c < 9

    examples = json.loads((first.sequences_dir / "examples" / "manifest.json").read_text())
    assert examples["splits"]["train"]["rows"] == 1
    assert examples["splits"]["test"]["rows"] == 2
    for entry in examples["splits"]["test"]["files"]:
        metadata = pq.read_metadata(first.sequences_dir / "examples" / entry["file"])
        assert metadata.num_row_groups == entry["rows"] == entry["row_groups"]
    train_file = examples["splits"]["train"]["files"][0]["file"]
    train = pq.read_table(first.sequences_dir / "examples" / train_file).to_pylist()[0]
    # B (3 counted events) gets id 4, A (2) gets 5; u1's training period is A, A, B.
    assert train["item"] == [5, 5, 4]
    assert train["purchase_label"] == 0

    # A second run with a new item D and a frozen vocabulary keeps every old id.
    second = Layout.from_root(tmp_path / "second")
    more = make_sessions(spark, [
        ("u3", "D", "W", "view", BASE), ("u3", "D", "W", "view", BASE + 5),
        ("u3", "D", "W", "view", BASE + 6), ("u3", "A", "X", "view", BASE + 7),
    ])
    build_sequences(spark, sessions.unionByName(more), second, max_len=10, min_item_count=1,
                    num_shards=2, frozen_vocab_dir=str(first.vocab_dir))

    frozen = json.loads((second.vocab_dir / "manifest.json").read_text())
    assert frozen["hash"] == vocab["hash"]
    assert frozen["frozen_from"]["hash"] == vocab["hash"]
    _, rows = read_rows(second)
    assert rows["u1"]["item"] == [5, 5, 4, 4, bucket_of_c]
    assert rows["u3"]["item"][-1] == 5
    assert all(6 <= item < 9 for item in rows["u3"]["item"][:3])


@pytest.mark.slow
def test_temporal_examples(spark, tmp_path):
    layout = Layout.from_root(tmp_path)
    day_two = BASE + 86_400  # BASE is 01:00 UTC, so the derived cutoff is 23 h after it
    sessions = make_sessions(spark, [
        ("u1", "A", "X", "view", BASE),
        ("u1", "B", "Y", "view", BASE + 10),
        ("u1", "C", "X", "cart", BASE + 20),
        ("u1", "D", "X", "purchase", day_two),
        ("u2", "B", "Y", "view", day_two),
    ])
    config = load_config("local", ["examples.protocol=temporal", "sequences.max_len=10"])
    settings = example_settings(config, sessions)

    build_sequences(spark, sessions, layout, max_len=10, min_item_count=1, num_shards=2,
                    settings=settings)

    assert settings.cutoff == BASE + 23 * 3600
    examples_dir = layout.sequences_dir / "examples"
    manifest = json.loads((examples_dir / "manifest.json").read_text())
    rows = {}
    for split, part in manifest["splits"].items():
        for entry in part["files"]:
            for row in pq.read_table(examples_dir / entry["file"]).to_pylist():
                rows[(split, row["user_key"])] = row
    assert set(rows) == {("train", "u1"), ("test", "u1")}
    # The vocabulary counts events before the cutoff only, so D is unknown.
    items = pq.read_table(layout.vocab_dir / "items.parquet").column("raw_id").to_pylist()
    assert "D" not in items
    train, test = rows[("train", "u1")], rows[("test", "u1")]
    assert len(train["item"]) == 3
    assert train["purchase_label"] == 0
    assert train["observed_until"] == settings.cutoff
    assert test["item"][-1] == tokens.UNKNOWN_ID
    assert test["num_inputs"] == 3
    assert test["purchase_label"] == 1
    assert test["return_label"] == 1
