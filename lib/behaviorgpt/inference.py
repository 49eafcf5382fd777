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
from behaviorgpt.data import Batch, EventSequences, make_batch
from behaviorgpt.model import BehaviorGPT, BehaviorGPTConfig
from behaviorgpt.tokens import NUM_RESERVED_IDS

PREDICTION_COLUMNS = ("top_item_ids", "top_item_scores", "top_category_ids",
                      "top_category_scores", "embedding", "purchase_propensity",
                      "return_propensity", "evidence_category_ids", "evidence_positions",
                      "evidence_attributions")


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
                 batch_size: int = 256, evidence_categories: int = 0,
                 evidence_events: int = 3) -> pd.DataFrame:
    """Predict the event after each user's last event.

    Args:
        loaded: output of `load_model`.
        frame: one row per user with `user_key` and the id stream columns of the shards
            (`item`, `category`, `event_type`, `time_gap`, `session_start`, each a list of
            ids, oldest first). Rows longer than the model's max_len keep their most recent
            events.
        top_k: items and categories returned per row; capped at the number of real ids.
        batch_size: users per forward pass.
        evidence_categories: how many of the top categories get evidence (0 turns the
            attribution pass off).
        evidence_events: maximum events cited per explained category.

    Returns:
        A DataFrame with the same index and row order as `frame`. Its columns are
        `top_item_ids` and `top_category_ids` (lists of raw id strings, best first),
        `top_item_scores` and `top_category_scores` (lists of probabilities), and
        `embedding` (list of `d_model` floats, the final hidden state at the last event),
        `purchase_propensity` (probability of a purchase within the next window of events)
        and `return_propensity` (probability that the user's next session starts within the
        return horizon the model was trained with), both floats in [0, 1].
        Reserved ids (padding, unknown, ...) never appear in the lists.
        `purchase_propensity` and `return_propensity` are floats, or None while the model has
        no such head (see `NextEventPrediction`).
        The evidence columns are three aligned lists per row: `evidence_category_ids` (the
        explained top category, repeated for each of its events), `evidence_positions`
        (index of the cited event in the row's input lists, oldest first, so truncation to
        max_len is already accounted for) and `evidence_attributions` (see
        `explain_top_categories`). They are empty lists when `evidence_categories` is 0.

    The caller sets `torch.set_num_threads`; this function does not change global state.
    """
    if top_k < 1:
        raise ValueError(f"top_k={top_k} is invalid: expected an integer >= 1")
    if evidence_categories < 0 or evidence_events < 1:
        raise ValueError(f"evidence_categories={evidence_categories} and evidence_events="
                         f"{evidence_events} are invalid: expected >= 0 and >= 1")
    if len(frame) == 0:
        return pd.DataFrame({name: pd.Series([], dtype=object) for name in PREDICTION_COLUMNS},
                            index=frame.index)

    sequences = EventSequences.from_frame(frame, loaded.config.max_len)
    # Hashed out-of-vocabulary buckets follow the vocabulary and have no raw id to return.
    item_end = _named_id_end(loaded.item_raw_ids)
    category_end = _named_id_end(loaded.category_raw_ids)
    item_k = min(top_k, item_end - NUM_RESERVED_IDS)
    category_k = min(top_k, category_end - NUM_RESERVED_IDS)
    explained_k = min(evidence_categories, category_k)
    # Rows longer than max_len lost their oldest events; evidence positions index the full row.
    dropped_events = _list_lengths(frame) - sequences.lengths
    columns: dict[str, list] = {name: [] for name in PREDICTION_COLUMNS}

    for start in range(0, len(sequences), batch_size):
        rows = np.arange(start, min(start + batch_size, len(sequences)))
        batch = make_batch(sequences, rows, "score").to(loaded.device)
        with torch.inference_mode():
            prediction = loaded.model.predict_next_event(batch, batch.last_positions)

        item_scores, item_ids = top_real_ids(prediction.item_probabilities, item_k,
                                             end=item_end)
        category_scores, category_ids = top_real_ids(prediction.category_probabilities,
                                                     category_k, end=category_end)
        columns["top_item_ids"].extend(loaded.item_raw_ids[item_ids].tolist())
        columns["top_item_scores"].extend(item_scores.tolist())
        columns["top_category_ids"].extend(loaded.category_raw_ids[category_ids].tolist())
        columns["top_category_scores"].extend(category_scores.tolist())
        columns["embedding"].extend(prediction.hidden.float().cpu().numpy().tolist())
        columns["purchase_propensity"].extend(_optional_floats(
            prediction.purchase_probability, len(rows)))
        columns["return_propensity"].extend(_optional_floats(
            prediction.return_probability, len(rows)))

        evidence = explain_top_categories(loaded, batch, category_ids[:, :explained_k],
                                          evidence_events)
        for row, (explained, positions, attributions) in zip(rows, evidence):
            columns["evidence_category_ids"].append(explained)
            columns["evidence_positions"].append(
                [int(position + dropped_events[row]) for position in positions])
            columns["evidence_attributions"].append(attributions)

    return pd.DataFrame(columns, index=frame.index)


def explain_top_categories(loaded: LoadedModel, batch: Batch, category_ids: np.ndarray,
                           max_events: int) -> list[tuple[list, list, list]]:
    """Find, for each row and each category in `category_ids`, the events that raised it most.

    Attribution is gradient x input on the summed input embeddings
    (`BehaviorGPT.category_attribution`). For each explained category the events with the
    largest positive attribution are kept, at most `max_events`, largest first. An event
    that lowered the category's probability is never cited.

    Args:
        category_ids: `[batch, k]` token ids of the categories to explain (k may be 0).

    Returns:
        One `(category raw ids, positions, attributions)` triple of aligned lists per row,
        positions indexing the batch's input events.
    """
    rows = len(batch.lengths)
    if category_ids.shape[1] == 0:
        return [([], [], []) for _ in range(rows)]

    chosen = torch.from_numpy(category_ids.astype(np.int64)).to(loaded.device)
    attributions = loaded.model.category_attribution(batch, batch.last_positions, chosen)
    is_input = (torch.arange(attributions.shape[-1], device=loaded.device)
                < batch.lengths.unsqueeze(-1)).unsqueeze(1)
    attributions = attributions.masked_fill(~is_input, -torch.inf)
    count = min(max_events, attributions.shape[-1])
    values, positions = attributions.topk(count, dim=-1)
    values, positions = values.float().cpu().numpy(), positions.cpu().numpy()

    results = []
    for row in range(rows):
        explained, cited, scores = [], [], []
        for column in range(category_ids.shape[1]):
            raw_category = loaded.category_raw_ids[category_ids[row, column]]
            for value, position in zip(values[row, column], positions[row, column]):
                if value > 0:
                    explained.append(raw_category)
                    cited.append(int(position))
                    scores.append(float(value))
        results.append((explained, cited, scores))
    return results


def top_real_ids(probabilities: torch.Tensor, k: int,
                 end: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return the `k` best non-reserved ids of `[batch, ids]` probabilities.

    Only ids below `end` compete when it is given. Returns (scores, ids), each a `[batch, k]`
    numpy array, best first.
    """
    scores, indices = probabilities[:, NUM_RESERVED_IDS:end].topk(k, dim=-1)
    return scores.float().cpu().numpy(), indices.cpu().numpy() + NUM_RESERVED_IDS


def _list_lengths(frame: pd.DataFrame) -> np.ndarray:
    return frame["item"].map(len).to_numpy(dtype=np.int64)


def _optional_floats(values: torch.Tensor | None, rows: int) -> list:
    if values is None:
        return [None] * rows
    return values.float().cpu().numpy().tolist()


def _named_id_end(raw_ids: np.ndarray) -> int:
    """Return one past the last token id that has a raw id (the end of the vocabulary)."""
    named = np.flatnonzero(raw_ids != None)  # noqa: E711 (elementwise on an object array)
    return int(named[-1]) + 1 if len(named) else NUM_RESERVED_IDS


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
