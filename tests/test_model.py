"""BehaviorGPT shapes, the copy mechanism, losses and the safetensors round trip."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from behaviorgpt.checkpoint import WEIGHTS_FILE, load_checkpoint, save_checkpoint
from behaviorgpt.data import EventSequences, eligible_rows, make_batch, training_batches
from behaviorgpt.layout import Layout
from behaviorgpt.losses import MultiTaskLoss, combine_task_losses, validate_task_weights
from behaviorgpt.model import BehaviorGPT, BehaviorGPTConfig, distance_bucket
from behaviorgpt.tokens import NUM_RESERVED_IDS, UNKNOWN_ID
from shards_helper import make_user, synthetic_users, write_vocab

NUM_ITEMS = 60
NUM_CATEGORIES = 10
MAX_LEN = 12


def small_model(seed: int = 0) -> BehaviorGPT:
    torch.manual_seed(seed)
    config = BehaviorGPTConfig(num_items=NUM_ITEMS, num_categories=NUM_CATEGORIES,
                               max_len=MAX_LEN, d_model=16, n_layer=1, n_head=2, dropout=0.0)
    return BehaviorGPT(config).eval()


def sequences_of(users: list[dict]) -> EventSequences:
    columns = {name: [user[name] for user in users] for name in users[0]}
    return EventSequences.from_arrow(pa.table(columns), MAX_LEN)


def random_sequences(count: int = 6) -> EventSequences:
    users, _ = synthetic_users(count, NUM_ITEMS, NUM_CATEGORIES, min_length=4,
                               max_length=MAX_LEN, seed=3)
    return sequences_of(users)


def test_forward_and_prediction_shapes():
    model = small_model()
    sequences = random_sequences()
    batch = make_batch(sequences, np.arange(len(sequences)), "score")

    with torch.inference_mode():
        hidden = model(batch)
        prediction = model.predict_next_event(batch, batch.last_positions)

    assert hidden.shape == (len(sequences), int(sequences.lengths.max()), 16)
    assert prediction.item_probabilities.shape == (len(sequences), NUM_ITEMS)
    assert prediction.category_probabilities.shape == (len(sequences), NUM_CATEGORIES)
    assert prediction.hidden.shape == (len(sequences), 16)
    torch.testing.assert_close(prediction.item_probabilities.sum(-1),
                               torch.ones(len(sequences)))
    assert prediction.item_probabilities[:, :NUM_RESERVED_IDS].max() == 0
    assert prediction.category_probabilities[:, :NUM_RESERVED_IDS].max() == 0


def test_training_likelihood_matches_prediction():
    # The training path (all positions at once) and the scoring path (one position per row)
    # compute the same mixed distribution in two ways, so they must agree.
    model = small_model()
    sequences = random_sequences()
    batch = make_batch(sequences, np.arange(len(sequences)), "train")
    mask = batch.target_item >= NUM_RESERVED_IDS

    with torch.no_grad():
        hidden = model(batch)
        log_likelihood = model.next_item_log_likelihood(hidden, batch, batch.target_item, mask)
        rows, positions = torch.nonzero(mask, as_tuple=True)
        prediction = model.predict_next_event(
            make_batch(sequences, rows.numpy(), "train"), positions)
    expected = prediction.item_probabilities[torch.arange(len(rows)),
                                             batch.target_item[rows, positions]].log()

    torch.testing.assert_close(log_likelihood, expected, rtol=1e-4, atol=1e-5)


def test_prediction_ignores_padding_and_other_rows():
    model = small_model()
    short = make_user([5, 6, 7], [4, 5, 6], key="short")
    long = make_user(list(range(10, 10 + MAX_LEN)), [4] * MAX_LEN, key="long")

    with torch.inference_mode():
        alone = sequences_of([short])
        alone_batch = make_batch(alone, np.array([0]), "score")
        together = sequences_of([short, long])
        together_batch = make_batch(together, np.array([0, 1]), "score")
        expected = model.predict_next_event(alone_batch, alone_batch.last_positions)
        padded = model.predict_next_event(together_batch, together_batch.last_positions)

    torch.testing.assert_close(padded.item_probabilities[0], expected.item_probabilities[0])
    torch.testing.assert_close(padded.hidden[0], expected.hidden[0])


def test_copy_gate_puts_mass_on_history_items():
    model = small_model()
    with torch.no_grad():
        model.copy_head.gate.bias.fill_(-30.0)  # gate ~ 0: almost all mass to the copy side
        model.copy_head.distance_bias.weight[0] = 20.0  # favour the most recent event

    history = [20, 21, 20, 22]
    sequences = sequences_of([make_user(history, [4, 5, 4, 6])])
    batch = make_batch(sequences, np.array([0]), "score")
    with torch.inference_mode():
        probabilities = model.predict_next_event(batch, batch.last_positions).item_probabilities[0]

    assert probabilities[sorted(set(history))].sum() > 0.999
    assert probabilities[23] < 1e-6
    assert int(probabilities.argmax()) == 22


def test_copy_sums_repeated_items():
    model = small_model()
    with torch.no_grad():
        model.copy_head.gate.bias.fill_(-30.0)
        # Equal scores for every source position: each occurrence adds 1 / (history length).
        model.copy_head.query.weight.zero_()
        model.copy_head.query.bias.zero_()

    sequences = sequences_of([make_user([30, 31, 30, 30], [4, 5, 4, 4])])
    batch = make_batch(sequences, np.array([0]), "score")
    with torch.inference_mode():
        probabilities = model.predict_next_event(batch, batch.last_positions).item_probabilities[0]

    assert float(probabilities[30]) == pytest.approx(0.75, abs=1e-4)
    assert float(probabilities[31]) == pytest.approx(0.25, abs=1e-4)


def test_unknown_history_falls_back_to_vocabulary():
    model = small_model()
    sequences = sequences_of([make_user([UNKNOWN_ID, UNKNOWN_ID], [4, 4])])
    batch = make_batch(sequences, np.array([0]), "score")
    with torch.inference_mode():
        probabilities = model.predict_next_event(batch, batch.last_positions).item_probabilities[0]

    assert torch.isfinite(probabilities).all()
    assert float(probabilities.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(probabilities[UNKNOWN_ID]) == 0.0


def test_distance_buckets():
    distances = torch.tensor([0, 1, 7, 8, 15, 16, 31, 32])
    assert distance_bucket(distances).tolist() == [0, 1, 7, 8, 8, 9, 9, 10]


def test_losses_are_finite_and_backpropagate():
    model = small_model()
    model.train()
    batch = next(training_batches(random_sequences(), batch_size=4, seed=0, epoch=0, rank=0))

    losses = MultiTaskLoss(model)(batch)
    total = combine_task_losses(losses, {"next_item": 1.0, "next_category": 0.5})
    total.backward()

    assert set(losses) == {"next_item", "next_category"}
    # An untrained model is close to uniform over the real ids.
    item_loss = losses["next_item"].item()
    assert 0.5 * math.log(NUM_ITEMS) < item_loss < 2 * math.log(NUM_ITEMS)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_task_weights_reject_unknown_task():
    with pytest.raises(ValueError, match="unknown tasks \\['next_price'\\]"):
        validate_task_weights({"next_item": 1.0, "next_category": 0.5, "next_price": 1.0})


def test_task_weights_reject_missing_and_negative():
    with pytest.raises(ValueError, match="lacks \\['next_category'\\]"):
        validate_task_weights({"next_item": 1.0})
    with pytest.raises(ValueError, match="next_item = -1"):
        validate_task_weights({"next_item": -1, "next_category": 0.5})


def saved_model(tmp_path):
    layout = Layout.from_root(tmp_path)
    write_vocab(layout.vocab_dir, NUM_ITEMS, NUM_CATEGORIES)
    model = small_model(seed=5)
    model_dir = save_checkpoint(model, layout, "v1", layout.vocab_dir, {"epochs": 0})
    return model, model_dir, layout


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    model, model_dir, layout = saved_model(tmp_path)
    loaded, description = load_checkpoint(model_dir)

    sequences = random_sequences()
    batch = make_batch(sequences, eligible_rows(sequences, "score"), "score")
    with torch.inference_mode():
        expected = model.predict_next_event(batch, batch.last_positions)
        actual = loaded.predict_next_event(batch, batch.last_positions)

    assert torch.equal(actual.item_probabilities, expected.item_probabilities)
    assert torch.equal(actual.category_probabilities, expected.category_probabilities)
    assert torch.equal(actual.hidden, expected.hidden)
    assert description["model_version"] == "v1"
    assert description["model"]["num_items"] == NUM_ITEMS
    assert layout.candidate_model_dir() == model_dir
    assert (model_dir / "vocab" / "items.parquet").is_file()


def test_checkpoint_rejects_pickle_weights(tmp_path):
    model, model_dir, _ = saved_model(tmp_path)
    torch.save(model.state_dict(), model_dir / WEIGHTS_FILE)

    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_checkpoint(model_dir)


def test_checkpoint_refuses_existing_version(tmp_path):
    model, _, layout = saved_model(tmp_path)
    with pytest.raises(FileExistsError, match="already exists"):
        save_checkpoint(model, layout, "v1", layout.vocab_dir, {})
