"""Non-learned next-item baselines, ranked by the same code and on the same split as the model.

- most popular: the items seen most often at training positions, the same list for everyone;
- recent items: the user's most recent distinct items before the target, most recent first;
- co-occurrence: the items that most often came right after the user's last input item at
  training positions (`behaviorgpt.cooccurrence` counts them in Spark and writes Parquet),
  backed off to the most popular items when that item has fewer neighbours.

Training positions are each user's first length-2 events: the validation and test events
(the last two) are never counted, so no target enters a baseline's counts. This module
imports neither torch nor pyspark.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from behaviorgpt.tokens import NUM_RESERVED_IDS, PAD_ID

COOCCURRENCE_COLUMNS = ("previous_item", "next_item", "pairs", "rank")
"""Columns of the co-occurrence Parquet folder: token ids, pair count, 1-based rank."""


def recent_distinct_items(items: np.ndarray, num_inputs: int, k: int) -> np.ndarray:
    """Return the `k` most recent distinct real item ids among `items[:num_inputs]`.

    The result is most recent first and padded with `PAD_ID` to length `k`.
    """
    recent = []
    for item in items[:num_inputs][::-1]:
        if item >= NUM_RESERVED_IDS and item not in recent:
            recent.append(int(item))
            if len(recent) == k:
                break
    return np.array(recent + [PAD_ID] * (k - len(recent)), dtype=np.int64)


def count_training_items(chunks: Iterable, num_items: int) -> np.ndarray:
    """Count each item id over the training positions (each user's first length-2 events).

    `chunks` yields `EventSequences` (or anything with `streams["item"]` and `lengths`).
    """
    counts = np.zeros(num_items, dtype=np.int64)
    for sequences in chunks:
        num_training = np.maximum(sequences.lengths - 2, 0)
        in_training = np.arange(sequences.streams["item"].shape[1]) < num_training[:, None]
        items = sequences.streams["item"][in_training]
        if len(items) and items.max() >= num_items:
            raise ValueError(f"item id {items.max()} is outside the model's vocabulary of "
                             f"{num_items} ids; the sequences and the model do not match")
        counts += np.bincount(items, minlength=num_items)
    return counts


def most_popular_items(counts: np.ndarray, k: int) -> np.ndarray:
    """Return the `k` real item ids with the highest counts (ties: lower id first)."""
    real = counts[NUM_RESERVED_IDS:]
    order = np.argsort(-real, kind="stable")[:k]
    return order + NUM_RESERVED_IDS


@dataclass
class CooccurrenceTable:
    """Top neighbours per previous item, as sorted arrays (a compressed sparse row layout)."""

    previous_items: np.ndarray
    """[entries] previous item id of each entry, sorted ascending."""
    next_items: np.ndarray
    """[entries] neighbour id; within one previous item, the most frequent first."""

    @classmethod
    def read(cls, path: str | Path) -> "CooccurrenceTable":
        """Read the Parquet folder (or file) that `behaviorgpt.cooccurrence` wrote."""
        table = pq.read_table(path, columns=list(COOCCURRENCE_COLUMNS)).sort_by(
            [("previous_item", "ascending"), ("rank", "ascending")])
        return cls(previous_items=table.column("previous_item").to_numpy().astype(np.int64),
                   next_items=table.column("next_item").to_numpy().astype(np.int64))

    def neighbours(self, item: int) -> np.ndarray:
        start, end = np.searchsorted(self.previous_items, [item, item + 1])
        return self.next_items[start:end]


def cooccurrence_lists(table: CooccurrenceTable, last_items: np.ndarray, popular: np.ndarray,
                       width: int) -> np.ndarray:
    """Return `[users, width]` ranked lists: the neighbours of each user's last input item,
    then the most popular items not already listed (the back-off)."""
    lists = np.full((len(last_items), width), PAD_ID, dtype=np.int64)
    for row, item in enumerate(last_items):
        neighbours = table.neighbours(int(item))[:width]
        backoff = popular[~np.isin(popular, neighbours)][:width - len(neighbours)]
        chosen = np.concatenate([neighbours, backoff])
        lists[row, :len(chosen)] = chosen
    return lists


def drop_seen(lists: np.ndarray, histories: np.ndarray, width: int) -> np.ndarray:
    """Remove from each ranked list the items of that user's history, keep the first `width`.

    `histories` is `[users, events]` of the user's input item ids (`PAD_ID` after the last).
    Lists that run short are padded with `PAD_ID`.
    """
    seen = (lists[:, :, None] == histories[:, None, :]).any(axis=2) | (lists < NUM_RESERVED_IDS)
    kept = np.full((len(lists), width), PAD_ID, dtype=np.int64)
    for row in range(len(lists)):
        remaining = lists[row][~seen[row]][:width]
        kept[row, :len(remaining)] = remaining
    return kept
