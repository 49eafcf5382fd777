"""The streaming example loader over example shards built by the Spark stages from the real
Taobao slice: exactly-once coverage over 2 ranks x 2 workers, resume, and length bucketing."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow.parquet as pq
import pytest

from behaviorgpt.config import load_config
from behaviorgpt.loader import ExampleLoader, ExampleStream, read_examples_manifest
from behaviorgpt.pipeline import RunContext, run_stages
from conftest import real_data_file

TAOBAO = "taobao_userbehavior/user_sorted_head_Haohanblue-mydeep/UserBehavior.csv"
MAX_LEN = 50

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def taobao_sequences(spark, tmp_path_factory):
    """Example shards of the real slice: 4 shards (2 per rank) of 256-row row groups."""
    source = real_data_file(TAOBAO)
    root = tmp_path_factory.mktemp("loader")
    overrides = [f"paths.root={root}", f"paths.input={source}", "run_date=2017-12-04",
                 "sequences.num_shards=4", f"sequences.max_len={MAX_LEN}",
                 "examples.rows_per_row_group=256"]
    context = RunContext.create(load_config("local", overrides), profile="local",
                                conf_dir=None, overrides=overrides)
    context.spark = spark
    run_stages(context, ["ingest", "sessionize", "sequences"])
    return context.layout.sequences_dir


def written_train_ids(sequences_dir) -> list[str]:
    manifest = read_examples_manifest(sequences_dir)
    ids = []
    for entry in manifest["splits"]["train"]["files"]:
        table = pq.read_table(sequences_dir / "examples" / entry["file"], columns=["example_id"])
        ids += table.column("example_id").to_pylist()
    return ids


def make_loader(sequences_dir, rank, world_size=2, workers=2, batch_size=32, bucket_batches=8):
    dataset = ExampleStream(sequences_dir, rank=rank, world_size=world_size,
                            batch_size=batch_size, seed=3, max_len=MAX_LEN,
                            shuffle_buffer=512, bucket_batches=bucket_batches,
                            num_streams=max(1, workers))
    return ExampleLoader(dataset, num_workers=workers)


def test_shards_are_streamable(taobao_sequences):
    manifest = read_examples_manifest(taobao_sequences)
    files = manifest["splits"]["train"]["files"]

    assert {entry["shard"] % 2 for entry in files} == {0, 1}
    assert sum(entry["rows"] for entry in files) == manifest["splits"]["train"]["rows"]
    assert sum(entry["row_groups"] for entry in files) >= 8
    for entry in files:
        metadata = pq.read_metadata(taobao_sequences / "examples" / entry["file"])
        sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        assert sizes[:-1] == [256] * (len(sizes) - 1)
        assert sum(sizes) == entry["rows"]


def test_two_ranks_two_workers_exactly_once(taobao_sequences):
    written = written_train_ids(taobao_sequences)

    seen = {}
    for rank in (0, 1):
        seen[rank] = [example for batch in make_loader(taobao_sequences, rank)
                      for example in batch.example_ids]

    everything = seen[0] + seen[1]
    assert len(written) > 1000
    assert len(everything) == len(written)
    assert len(set(everything)) == len(everything)
    assert set(everything) == set(written)
    assert not set(seen[0]) & set(seen[1])


def test_resume_matches_uninterrupted(taobao_sequences):
    uninterrupted = make_loader(taobao_sequences, rank=0)
    uninterrupted.set_epoch(1)
    expected = [batch.example_ids for batch in uninterrupted]

    first = make_loader(taobao_sequences, rank=0)
    first.set_epoch(1)
    stopped_after = 5  # odd, so the next batch comes from the second worker
    head = [batch.example_ids for batch in itertools.islice(first, stopped_after)]
    state = first.state_dict()

    resumed = make_loader(taobao_sequences, rank=0)
    resumed.load_state_dict(state)
    rest = [batch.example_ids for batch in resumed]

    assert head == expected[:stopped_after]
    assert rest == expected[stopped_after:]
    assert len(rest) > stopped_after


def test_epochs_reshuffle(taobao_sequences):
    loader = make_loader(taobao_sequences, rank=1, workers=0)

    epoch0 = [example for batch in loader for example in batch.example_ids]
    epoch1 = [example for batch in loader for example in batch.example_ids]

    assert sorted(epoch0) == sorted(epoch1)
    assert epoch0 != epoch1


def test_bucketing_reduces_padding(taobao_sequences):
    def padding_fraction(bucket_batches):
        real = slots = 0
        for batch in make_loader(taobao_sequences, rank=0, workers=0,
                                 bucket_batches=bucket_batches):
            real += int(batch.lengths.sum())
            slots += batch.item.numel()
        return 1 - real / slots

    bucketed, unbucketed = padding_fraction(8), padding_fraction(1)

    assert bucketed < unbucketed
    assert bucketed < unbucketed / 2


def test_batch_targets_and_labels(taobao_sequences):
    batch = next(iter(make_loader(taobao_sequences, rank=0, workers=0)))

    rows = np.arange(batch.item.shape[0])
    last = batch.lengths - 1
    # Each input position's target is the next input, except at the last input position.
    assert (batch.target_item[:, :-1][batch.item[:, 1:] != 0]
            == batch.item[:, 1:][batch.item[:, 1:] != 0]).all()
    assert (batch.target_item[rows, last] >= 1).all()
    assert set(batch.purchase_label.tolist()) <= {0, 1}
    assert set(batch.return_label.tolist()) <= {0, 1}
    assert batch.category_interest.shape[0] == len(rows)


def test_real_train_examples_end_before_holdout(taobao_sequences):
    manifest = read_examples_manifest(taobao_sequences)
    ends = {}
    for split in ("train", "test"):
        for entry in manifest["splits"][split]["files"]:
            table = pq.read_table(taobao_sequences / "examples" / entry["file"],
                                  columns=["user_key", "example_id", "event_time",
                                           "observed_until"])
            for row in table.to_pylist():
                end = int(row["example_id"].rsplit("/", 1)[1])
                ends.setdefault((split, row["user_key"]), []).append((end, row))

    checked = 0
    for (split, user), examples in ends.items():
        if split != "train":
            continue
        test_end, test_row = ends[("test", user)][0]
        validation_time = test_row["event_time"][-2]
        for end, row in examples:
            # Training never reaches the last two events (validation and test).
            assert end <= test_end - 2
            assert row["observed_until"] == validation_time
            assert max(row["event_time"]) <= validation_time
            checked += 1
    assert checked == manifest["splits"]["train"]["rows"]
