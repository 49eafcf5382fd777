"""Warm start: begin training from the serving model's weights, in tonight's vocabulary.

Tonight's vocabulary may give an item another token id than the serving model's vocabulary
(copied into its folder as `vocab/`), and may contain items the model never saw. So every
weight whose rows are indexed by item or category id is copied row by row through the raw
ids. A row of tonight's id gets the serving model's row of the same raw id. Ids the model
never saw keep their fresh random initialisation. All other weights are copied as
they are. The same mapping idea as `vocab_alignment`, on tensors instead of Spark columns.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from behaviorgpt.checkpoint import load_checkpoint
from behaviorgpt.layout import Layout
from behaviorgpt.model import BehaviorGPT
from behaviorgpt.tokens import NUM_RESERVED_IDS

log = logging.getLogger(__name__)

ITEM_ROW_WEIGHTS = ("embed.item.weight", "item_output", "item_bias")
"""State dict entries whose row i belongs to item token id i."""

CATEGORY_ROW_WEIGHTS = ("embed.category.weight", "category_head.weight", "category_head.bias",
                        "interest_head.weight", "interest_head.bias")
"""State dict entries whose row i belongs to category token id i."""


def token_id_mapping(new_vocab: Path, old_vocab: Path, size: int) -> np.ndarray:
    """Return `[size]` int64: for each new token id the old token id of the same raw id, or -1.

    Reserved ids (padding, unknown, session boundary, mask) map to themselves.
    """
    new = pq.read_table(new_vocab, columns=["token_id", "raw_id"]).to_pandas()
    old = pq.read_table(old_vocab, columns=["token_id", "raw_id"]).to_pandas()
    joined = new.merge(old, on="raw_id", suffixes=("_new", "_old"))
    mapping = np.full(size, -1, dtype=np.int64)
    mapping[:NUM_RESERVED_IDS] = np.arange(NUM_RESERVED_IDS)
    mapping[joined["token_id_new"].to_numpy()] = joined["token_id_old"].to_numpy()
    return mapping


def load_serving_weights(model: BehaviorGPT, layout: Layout, vocab_dir: Path) -> bool:
    """Copy the serving model's weights (`models/LATEST`) into `model`, row-mapped by raw id.

    `model` is built for the vocabulary in `vocab_dir`. Returns False, leaving `model` as it
    is, when there is no serving model yet (the first night). Raises ValueError when a
    non-vocabulary weight has another shape (model sizes or max_len changed: train from
    scratch with train.warm_start=false).
    """
    if layout.pointed_version(layout.latest_model_file) is None:
        log.warning("train.warm_start is set but %s names no serving model: training from "
                    "random weights", layout.latest_model_file)
        return False
    serving_dir = layout.latest_model_dir()
    serving, _ = load_checkpoint(serving_dir)
    old_state = serving.state_dict()
    new_state = model.state_dict()

    mappings = {
        "item": token_id_mapping(Path(vocab_dir) / "items.parquet",
                                 serving_dir / "vocab" / "items.parquet",
                                 model.config.num_items),
        "category": token_id_mapping(Path(vocab_dir) / "categories.parquet",
                                     serving_dir / "vocab" / "categories.parquet",
                                     model.config.num_categories),
    }
    with torch.no_grad():
        for name, target in new_state.items():
            if name not in old_state:
                continue
            source = old_state[name].to(target.device)
            kind = ("item" if name in ITEM_ROW_WEIGHTS
                    else "category" if name in CATEGORY_ROW_WEIGHTS else None)
            # Row-mapped weights may differ in their number of rows, nothing else may.
            first_fixed_dim = 0 if kind is None else 1
            if source.shape[first_fixed_dim:] != target.shape[first_fixed_dim:]:
                raise ValueError(f"cannot warm start from {serving_dir}: {name} has shape "
                                 f"{tuple(source.shape)} there and {tuple(target.shape)} "
                                 f"here. Fix: set train.warm_start=false to train the "
                                 f"changed model from scratch")
            if kind is None:
                target.copy_(source)
                continue
            mapping = torch.from_numpy(mappings[kind])
            known = (mapping >= 0).nonzero().squeeze(1)
            target[known] = source[mapping[known]]

    matched = {kind: int((mapping >= NUM_RESERVED_IDS).sum()) for kind, mapping in
               mappings.items()}
    log.info("warm start from serving model %s: %d of %d items and %d of %d categories "
             "keep their trained rows", serving_dir.name, matched["item"],
             model.config.num_items - NUM_RESERVED_IDS, matched["category"],
             model.config.num_categories - NUM_RESERVED_IDS)
    return True
