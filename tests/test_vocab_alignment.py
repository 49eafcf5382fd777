"""Moving token sequences from tonight's vocabulary to the one an older model was trained with."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from behaviorgpt.tokens import SESSION_BOUNDARY_ID, UNKNOWN_ID
from behaviorgpt.vocab_alignment import align_to_vocabulary, vocabulary_hash

SHARD_SCHEMA = "user_key string, item array<int>, category array<int>, length int"


def write_vocabulary(folder, items: dict[str, int], categories: dict[str, int], digest: str):
    folder.mkdir(parents=True)
    for name, ids in (("items", items), ("categories", categories)):
        pq.write_table(pa.table({"token_id": pa.array(list(ids.values()), pa.int32()),
                                 "raw_id": pa.array(list(ids)),
                                 "count": pa.array([1] * len(ids), pa.int64())}),
                       folder / f"{name}.parquet")
    (folder / "manifest.json").write_text(json.dumps({"hash": digest}))
    return folder


def test_ids_follow_raw_ids(spark, tmp_path):
    tonight = write_vocabulary(tmp_path / "tonight", {"i7": 4, "i8": 5, "i9": 6}, {"c1": 4},
                               "new")
    model = write_vocabulary(tmp_path / "model", {"i9": 4, "i7": 5}, {"c2": 4, "c1": 5}, "old")
    sequences = spark.createDataFrame(
        [("u1", [4, SESSION_BOUNDARY_ID, 5, 6, UNKNOWN_ID], [4, 4, 4, 4, 4], 5),
         ("u2", [6], [4], 1), ("u3", [], [], 0)], SHARD_SCHEMA)

    aligned = align_to_vocabulary(spark, sequences, tonight, model)

    rows = {row["user_key"]: row for row in aligned.collect()}
    assert aligned.columns == sequences.columns
    assert aligned.schema.simpleString() == sequences.schema.simpleString()
    # i7 -> 5, boundary kept, i8 unknown to the model, i9 -> 4, unknown kept.
    assert rows["u1"]["item"] == [5, SESSION_BOUNDARY_ID, UNKNOWN_ID, 4, UNKNOWN_ID]
    assert rows["u1"]["category"] == [5, 5, 5, 5, 5]
    assert rows["u1"]["length"] == 5
    assert rows["u2"]["item"] == [4]
    assert rows["u3"]["item"] == []
    assert vocabulary_hash(model) == "old"
