"""Warm start copies the serving model's rows to the same raw ids in tonight's vocabulary."""

from __future__ import annotations

import pytest
import torch

from behaviorgpt.checkpoint import save_checkpoint
from behaviorgpt.layout import Layout
from behaviorgpt.model import BehaviorGPT, BehaviorGPTConfig
from behaviorgpt.warm_start import load_serving_weights
from test_vocab_alignment import write_vocabulary


def make_model(num_items: int, num_categories: int, seed: int) -> BehaviorGPT:
    torch.manual_seed(seed)
    return BehaviorGPT(BehaviorGPTConfig(num_items=num_items, num_categories=num_categories,
                                         max_len=8, d_model=16, n_layer=1, n_head=2))


def test_old_item_rows_start_equal(tmp_path):
    layout = Layout.from_root(tmp_path)
    # Ids 0-3 are reserved. Tonight i9 and i7 swap places, i5 is new and i8 is gone.
    old_vocab = write_vocabulary(tmp_path / "old", {"i7": 4, "i8": 5, "i9": 6}, {"c1": 4},
                                 "old")
    new_vocab = write_vocabulary(tmp_path / "new", {"i9": 4, "i7": 5, "i5": 6, "i6": 7},
                                 {"c2": 4, "c1": 5}, "new")
    serving = make_model(7, 5, seed=1)
    save_checkpoint(serving, layout, "v1", old_vocab, training_summary={})
    layout.point(layout.latest_model_file, "v1")
    model = make_model(8, 6, seed=2)
    fresh_row = model.embed.item.weight[6].detach().clone()

    loaded = load_serving_weights(model, layout, new_vocab)

    assert loaded
    old_items, new_items = serving.embed.item.weight, model.embed.item.weight
    assert torch.equal(new_items[4], old_items[6])  # i9
    assert torch.equal(new_items[5], old_items[4])  # i7
    assert torch.equal(new_items[:4], old_items[:4])  # reserved ids
    assert torch.equal(new_items[6], fresh_row)  # i5 is new: keeps its fresh row
    assert torch.equal(model.item_bias[5], serving.item_bias[4])
    assert torch.equal(model.category_head.weight[5], serving.category_head.weight[4])  # c1
    assert torch.equal(model.backbone.wpe.weight, serving.backbone.wpe.weight)


def test_no_serving_model_keeps_weights(tmp_path):
    layout = Layout.from_root(tmp_path)
    vocab = write_vocabulary(tmp_path / "new", {"i9": 4}, {"c1": 4}, "new")
    model = make_model(5, 5, seed=2)
    before = model.embed.item.weight.detach().clone()

    assert not load_serving_weights(model, layout, vocab)
    assert torch.equal(model.embed.item.weight, before)


def test_changed_model_size_is_rejected(tmp_path):
    layout = Layout.from_root(tmp_path)
    vocab = write_vocabulary(tmp_path / "vocab", {"i9": 4}, {"c1": 4}, "v")
    save_checkpoint(make_model(5, 5, seed=1), layout, "v1", vocab, training_summary={})
    layout.point(layout.latest_model_file, "v1")
    wider = BehaviorGPT(BehaviorGPTConfig(num_items=5, num_categories=5, max_len=8, d_model=32,
                                          n_layer=1, n_head=2))

    with pytest.raises(ValueError, match="train.warm_start=false"):
        load_serving_weights(wider, layout, vocab)
