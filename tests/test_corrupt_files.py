"""Damaged model folders and Parquet shards: one clear error naming the file and the fix.

Each case damages one file of a small real model folder or shard set, then reads it the way
training, evaluation or scoring does. The error must be `CorruptFileError` whose message
names the damaged file and a fix, and the CLI must print it as one line and exit non-zero.
"""

from __future__ import annotations

import pytest
import torch

from behaviorgpt.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint
from behaviorgpt.data import iter_shard_sequences, read_manifest, read_rank_sequences
from behaviorgpt.errors import CorruptFileError
from behaviorgpt.layout import Layout
from behaviorgpt.loader import ExampleStream
from behaviorgpt.model import BehaviorGPT, BehaviorGPTConfig
from shards_helper import synthetic_users, write_dataset

NUM_ITEMS = 40
NUM_CATEGORIES = 8
MAX_LEN = 12


@pytest.fixture()
def model_root(tmp_path):
    """A root with shards, example shards, vocabulary and one saved model (models/LATEST)."""
    users, _ = synthetic_users(12, NUM_ITEMS, NUM_CATEGORIES, 5, 10, seed=1)
    write_dataset(tmp_path, users, [6, 6], MAX_LEN, NUM_ITEMS, NUM_CATEGORIES)
    torch.manual_seed(0)
    model = BehaviorGPT(BehaviorGPTConfig(num_items=NUM_ITEMS, num_categories=NUM_CATEGORIES,
                                          max_len=MAX_LEN, d_model=16, n_layer=1, n_head=2))
    layout = Layout.from_root(tmp_path)
    model_dir = save_checkpoint(model.eval(), layout, "v1", layout.vocab_dir, {})
    layout.point(layout.latest_model_file, "v1")
    return layout, model_dir


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def garble(path) -> None:
    """Replace the file with bytes of the same length that are no valid file of any kind."""
    size = path.stat().st_size
    path.write_bytes(bytes((index * 131 + 7) % 256 for index in range(size)))


def assert_names_file(error: pytest.ExceptionInfo, path) -> None:
    assert isinstance(error.value, CorruptFileError)
    assert str(path) in str(error.value)
    assert "Fix:" in str(error.value)


@pytest.mark.parametrize("damage", [truncate, garble])
@pytest.mark.parametrize(("name", "problem"), [
    (WEIGHTS_FILE, "only safetensors weights are loaded"),
    (CONFIG_FILE, "not valid JSON"),
])
def test_damaged_model_file_named(model_root, damage, name, problem):
    _, model_dir = model_root
    damage(model_dir / name)

    with pytest.raises(CorruptFileError) as error:
        load_checkpoint(model_dir)

    assert_names_file(error, model_dir / name)
    assert problem in str(error.value)


def test_mismatched_weights_named(model_root, tmp_path):
    _, model_dir = model_root
    other = BehaviorGPT(BehaviorGPTConfig(num_items=NUM_ITEMS, num_categories=NUM_CATEGORIES,
                                          max_len=MAX_LEN, d_model=32, n_layer=1, n_head=2))
    other_layout = Layout.from_root(tmp_path / "other")
    other_dir = save_checkpoint(other, other_layout, "v2", model_root[0].vocab_dir, {})
    (model_dir / WEIGHTS_FILE).write_bytes((other_dir / WEIGHTS_FILE).read_bytes())

    with pytest.raises(CorruptFileError, match="does not match the model described") as error:
        load_checkpoint(model_dir)

    assert_names_file(error, model_dir / WEIGHTS_FILE)


def test_pickle_weights_rejected(model_root):
    _, model_dir = model_root
    weights = model_dir / WEIGHTS_FILE
    torch.save({"x": torch.zeros(1)}, model_dir / "pytorch_model.bin")
    weights.unlink()

    with pytest.raises(CorruptFileError) as error:
        load_checkpoint(model_dir)

    assert "pytorch_model.bin" in str(error.value)
    assert "only safetensors weights are" in str(error.value)


@pytest.mark.parametrize("damage", [truncate, garble])
def test_damaged_sequence_shard_named(model_root, damage):
    layout, _ = model_root
    manifest = read_manifest(layout.sequences_dir)
    shard = layout.sequences_dir / manifest.shard_files[1]
    damage(shard)

    with pytest.raises(CorruptFileError) as training_error:
        read_rank_sequences(layout.sequences_dir, rank=1, world_size=2)
    with pytest.raises(CorruptFileError) as evaluation_error:
        list(iter_shard_sequences([shard], MAX_LEN))

    assert_names_file(training_error, shard)
    assert_names_file(evaluation_error, shard)


@pytest.mark.parametrize("damage", [truncate, garble])
def test_damaged_example_shard_named(model_root, damage):
    layout, _ = model_root
    shard = layout.sequences_dir / "examples" / "train" / "part-00000.parquet"
    damage(shard)
    stream = ExampleStream(layout.sequences_dir, rank=0, world_size=1, batch_size=4, seed=0,
                           max_len=MAX_LEN, shuffle=False)

    with pytest.raises(CorruptFileError) as error:
        list(stream)

    assert_names_file(error, shard)


@pytest.mark.parametrize(("stage", "damaged"), [
    ("evaluate", f"models/v1/{WEIGHTS_FILE}"),
    ("score", "sequences/part-00001.parquet"),
])
def test_cli_prints_one_line(spark, model_root, capsys, stage, damaged):
    from behaviorgpt.cli import main

    layout, _ = model_root
    # The synthetic shards sit directly in sequences/; scoring reads sequences/shards/.
    shards = layout.sequences_dir / "shards"
    shards.mkdir()
    for shard in layout.sequences_dir.glob("part-*.parquet"):
        (shards / shard.name).write_bytes(shard.read_bytes())
    path = layout.root / damaged
    if stage == "score":
        path = shards / path.name
    truncate(path)

    status = main([stage, "--root", str(layout.root), "--date", "2017-12-04",
                   "--set", "score.database="])

    message = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert message[-1].startswith("behaviorgpt: error: ")
    assert str(path) in message[-1]
    assert "Traceback" not in "\n".join(message)
