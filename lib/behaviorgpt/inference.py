"""Load a trained model and predict each user's next items and categories.

This module is the only way to run a trained model: evaluation and the Spark scoring UDF both
call it. It imports no Spark; the UDF passes pandas DataFrames with the shard columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from behaviorgpt.checkpoint import VOCAB_DIR, load_checkpoint
from behaviorgpt.data import EventSequences, make_batch
from behaviorgpt.model import BehaviorGPT, BehaviorGPTConfig
from behaviorgpt.tokens import NUM_RESERVED_IDS

PREDICTION_COLUMNS = ("top_item_ids", "top_item_scores", "top_category_ids",
                      "top_category_scores", "embedding", "purchase_propensity",
                      "return_propensity")


@dataclass
class LoadedModel:
    """A trained model in eval mode with the maps from token ids back to raw ids."""

    model: BehaviorGPT
    config: BehaviorGPTConfig
    model_version: str
    item_raw_ids: np.ndarray
    """[num_items] object array: token id -> raw item id string (None for reserved ids)."""
    category_raw_ids: np.ndarray
    """[num_categories] object array: token id -> raw category id string."""
    device: torch.device


def load_model(model_dir: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Load the model folder written by training (weights, config and vocabulary copy)."""
    model, description = load_checkpoint(model_dir, device)
    vocab_dir = Path(model_dir) / VOCAB_DIR
    return LoadedModel(
        model=model,
        config=model.config,
        model_version=description["model_version"],
        item_raw_ids=_read_raw_ids(vocab_dir / "items.parquet", model.config.num_items),
        category_raw_ids=_read_raw_ids(vocab_dir / "categories.parquet",
                                       model.config.num_categories),
        device=torch.device(device),
    )


def predict_next(loaded: LoadedModel, frame: pd.DataFrame, top_k: int = 10,
                 batch_size: int = 256) -> pd.DataFrame:
    """Predict the event after each user's last event.

    Args:
        loaded: output of `load_model`.
        frame: one row per user with `user_key` and the id stream columns of the shards
            (`item`, `category`, `event_type`, `time_gap`, `session_start`, each a list of
            ids, oldest first). Rows longer than the model's max_len keep their most recent
            events.
        top_k: items and categories returned per row; capped at the number of real ids.
        batch_size: users per forward pass.

    Returns:
        A DataFrame with the same index and row order as `frame`. Its columns are
        `top_item_ids` and `top_category_ids` (lists of raw id strings, best first),
        `top_item_scores` and `top_category_scores` (lists of probabilities), and
        `embedding` (list of `d_model` floats, the final hidden state at the last event),
        `purchase_propensity` (probability of a purchase within the next window of events)
        and `return_propensity` (probability that the user's next session starts within the
        return horizon the model was trained with), both floats in [0, 1].
        Reserved ids (padding, unknown, ...) never appear in the lists.

    The caller sets `torch.set_num_threads`; this function does not change global state.
    """
    if top_k < 1:
        raise ValueError(f"top_k={top_k} is invalid: expected an integer >= 1")
    if len(frame) == 0:
        return pd.DataFrame({name: pd.Series([], dtype=object) for name in PREDICTION_COLUMNS},
                            index=frame.index)

    sequences = EventSequences.from_frame(frame, loaded.config.max_len)
    item_k = min(top_k, loaded.config.num_items - NUM_RESERVED_IDS)
    category_k = min(top_k, loaded.config.num_categories - NUM_RESERVED_IDS)
    columns: dict[str, list] = {name: [] for name in PREDICTION_COLUMNS}

    with torch.inference_mode():
        for start in range(0, len(sequences), batch_size):
            rows = np.arange(start, min(start + batch_size, len(sequences)))
            batch = make_batch(sequences, rows, "score").to(loaded.device)
            prediction = loaded.model.predict_next_event(batch, batch.last_positions)

            item_scores, item_ids = top_real_ids(prediction.item_probabilities, item_k)
            category_scores, category_ids = top_real_ids(prediction.category_probabilities,
                                                         category_k)
            columns["top_item_ids"].extend(loaded.item_raw_ids[item_ids].tolist())
            columns["top_item_scores"].extend(item_scores.tolist())
            columns["top_category_ids"].extend(loaded.category_raw_ids[category_ids].tolist())
            columns["top_category_scores"].extend(category_scores.tolist())
            columns["embedding"].extend(prediction.hidden.float().cpu().numpy().tolist())
            columns["purchase_propensity"].extend(
                prediction.purchase_probability.double().cpu().numpy().tolist())
            columns["return_propensity"].extend(
                prediction.return_probability.double().cpu().numpy().tolist())

    return pd.DataFrame(columns, index=frame.index)


def top_real_ids(probabilities: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the `k` best non-reserved ids of `[batch, ids]` probabilities.

    Returns (scores, ids), each a `[batch, k]` numpy array, best first.
    """
    scores, indices = probabilities[:, NUM_RESERVED_IDS:].topk(k, dim=-1)
    return scores.float().cpu().numpy(), indices.cpu().numpy() + NUM_RESERVED_IDS


def _read_raw_ids(path: Path, size: int) -> np.ndarray:
    """Read a vocabulary file into a [size] object array indexed by token id."""
    table = pq.read_table(path, columns=["token_id", "raw_id"])
    token_ids = table.column("token_id").to_numpy()
    if len(token_ids) and (token_ids.min() < NUM_RESERVED_IDS or token_ids.max() >= size):
        raise ValueError(f"{path}: token ids must lie in [{NUM_RESERVED_IDS}, {size}), found "
                         f"{token_ids.min()}..{token_ids.max()}; the vocabulary does not match "
                         f"the model")
    raw_ids = np.full(size, None, dtype=object)
    raw_ids[token_ids] = table.column("raw_id").to_numpy(zero_copy_only=False)
    return raw_ids
