"""Leave-one-out evaluation of the next-item prediction against two baselines.

Every user with at least two events contributes its last event (the test target), predicted
from all events before it. The model ranks every real item of the vocabulary. Two baselines
are scored by the same code on the same targets:

- most popular: the k items seen most often at training positions (each user's first
  length-2 events), the same list for every user;
- recent items: the user's k most recent distinct items before the target, most recent first.

A target outside the vocabulary (the unknown-item id) counts as a miss for every method.
HR@k is the share of users whose target is in the top k; NDCG@k with one relevant item is the
mean of 1 / log2(rank + 2) over hits, with rank counted from 0.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from behaviorgpt.config import load_config
from behaviorgpt.data import (EventSequences, eligible_rows, iter_shard_sequences, make_batch,
                              read_manifest)
from behaviorgpt.inference import load_model, top_real_ids
from behaviorgpt.layout import Layout
from behaviorgpt.losses import window_labels
from behaviorgpt.model import BehaviorGPT
from behaviorgpt.tokens import NUM_RESERVED_IDS, PAD_ID

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


@dataclass
class RankingTotals:
    """Running sums of hits and NDCG gains over users, for one method."""

    hits: float = 0.0
    ndcg: float = 0.0
    users: int = 0

    def add(self, top_ids: np.ndarray, targets: np.ndarray) -> None:
        """Add users with ranked lists `[users, k]` (`PAD_ID` fills short lists) and targets."""
        matches = (top_ids == targets[:, None]) & (targets[:, None] >= NUM_RESERVED_IDS)
        hit_rows, hit_ranks = np.nonzero(matches)
        self.hits += float(len(hit_rows))
        self.ndcg += float(np.sum(1.0 / np.log2(hit_ranks + 2.0)))
        self.users += len(targets)

    def merge(self, other: "RankingTotals") -> None:
        self.hits += other.hits
        self.ndcg += other.ndcg
        self.users += other.users

    def as_dict(self, k: int) -> dict[str, float]:
        users = max(self.users, 1)
        return {f"hr@{k}": self.hits / users, f"ndcg@{k}": self.ndcg / users}


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


def count_training_items(chunks: Iterable[EventSequences], num_items: int) -> np.ndarray:
    """Count each item id over the training positions (each user's first length-2 events)."""
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


def model_top_items(model: BehaviorGPT, sequences: EventSequences, view: str, k: int,
                    batch_size: int, device: torch.device | str = "cpu"
                    ) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """Yield (top ids `[users, k]`, target ids `[users]`) of a validation or test view."""
    rows = eligible_rows(sequences, view)
    k = min(k, model.config.num_items - NUM_RESERVED_IDS)
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = make_batch(sequences, rows[start:start + batch_size], view).to(device)
            prediction = model.predict_next_event(batch, batch.last_positions)
            _, top_ids = top_real_ids(prediction.item_probabilities, k)
            yield top_ids, batch.target_item.cpu().numpy()


def binary_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Return the ROC AUC of `scores` for binary `labels` (ties count half), or NaN when one
    class is absent. Computed as the Mann-Whitney statistic from average ranks."""
    labels = np.asarray(labels).astype(bool)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average rank (1-based) over each run of tied scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0)
                 / (positives * negatives))


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Return the mean over rows `[rows, classes]` of average precision, skipping rows without
    a positive label; NaN when no row has one. Ties are broken by column order."""
    precisions = []
    for row_scores, row_labels in zip(scores, labels.astype(bool)):
        if not row_labels.any():
            continue
        hits = row_labels[np.argsort(-row_scores, kind="stable")]
        hit_ranks = np.flatnonzero(hits) + 1
        precisions.append(np.mean(np.arange(1, len(hit_ranks) + 1) / hit_ranks))
    return float(np.mean(precisions)) if precisions else float("nan")


def window_task_metrics(model: BehaviorGPT, sequences: EventSequences, view: str,
                        window_events: int, return_days: float, batch_size: int,
                        device: torch.device | str = "cpu") -> dict[str, float]:
    """Score the next-window heads on one cutoff per user of a view (see `window_labels`).

    Returns AUC of the purchase and return heads, mAP of the category interest head over the
    real categories, and the number of cutoffs.
    """
    rows = eligible_rows(sequences, view)
    purchase_scores, purchase_labels, return_scores, return_labels = [], [], [], []
    interest_scores, interest_labels = [], []
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = make_batch(sequences, rows[start:start + batch_size], view).to(device)
            labels = window_labels(batch, model.config.num_categories, window_events,
                                   return_days, all_cutoffs=False)
            states = model(batch)[labels.rows, labels.positions]
            purchase_scores.append(model.purchase_head(states).squeeze(-1).cpu().numpy())
            return_scores.append(model.return_head(states).squeeze(-1).cpu().numpy())
            interest_scores.append(
                model.interest_head(states)[:, NUM_RESERVED_IDS:].cpu().numpy())
            purchase_labels.append(labels.purchase.cpu().numpy())
            return_labels.append(labels.returned.cpu().numpy())
            interest_labels.append(labels.category_interest[:, NUM_RESERVED_IDS:].cpu().numpy())
    if not purchase_scores:
        return {"purchase_auc": float("nan"), "return_auc": float("nan"),
                "category_interest_map": float("nan"), "cutoffs": 0}
    return {
        "purchase_auc": binary_auc(np.concatenate(purchase_scores),
                                   np.concatenate(purchase_labels)),
        "return_auc": binary_auc(np.concatenate(return_scores), np.concatenate(return_labels)),
        "category_interest_map": mean_average_precision(np.concatenate(interest_scores),
                                                        np.concatenate(interest_labels)),
        "cutoffs": int(sum(len(labels) for labels in purchase_labels)),
    }


def evaluate_leave_one_out(model_dir: str | Path, sequences_dir: str | Path, k: int = 10,
                           batch_size: int = 256) -> dict:
    """Score the model and both baselines on the test events; write and return `metrics.json`.

    The shards are streamed twice (once to count item popularity over training positions,
    once to rank), so memory stays bounded by one chunk of users.
    """
    loaded = load_model(model_dir)
    manifest = read_manifest(sequences_dir)
    paths = [Path(sequences_dir) / name for name in manifest.shard_files]
    max_len = loaded.config.max_len

    counts = count_training_items(iter_shard_sequences(paths, max_len), loaded.config.num_items)
    popular = most_popular_items(counts, k)

    totals = {"model": RankingTotals(), "most_popular": RankingTotals(),
              "recent_items": RankingTotals()}
    for sequences in iter_shard_sequences(paths, max_len):
        for top_ids, targets in model_top_items(loaded.model, sequences, "test", k, batch_size):
            totals["model"].add(top_ids, targets)

        rows = eligible_rows(sequences, "test")
        targets = sequences.streams["item"][rows, sequences.lengths[rows] - 1]
        totals["most_popular"].add(np.tile(popular, (len(rows), 1)), targets)
        recent = np.stack([recent_distinct_items(sequences.streams["item"][row],
                                                 int(sequences.lengths[row]) - 1, k)
                           for row in rows]) if len(rows) else np.zeros((0, k), np.int64)
        totals["recent_items"].add(recent, targets)

    metrics = {
        "model_version": loaded.model_version,
        "split": "test",
        "k": k,
        "users": totals["model"].users,
        **{name: total.as_dict(k) for name, total in totals.items()},
    }
    (Path(model_dir) / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n",
                                                encoding="utf-8")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    """Evaluate the latest (or a named) model on the configured sequences and print metrics."""
    parser = argparse.ArgumentParser(prog="python -m behaviorgpt.evaluate",
                                     description=main.__doc__)
    parser.add_argument("--profile", default="local", help="config profile under --conf")
    parser.add_argument("--conf", default=None, help="config folder (default: the repo's conf/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, for example train.batch_size=64")
    parser.add_argument("--model-version", default=None,
                        help="model version to evaluate (default: the one named in LATEST)")
    parser.add_argument("--k", type=int, default=10, help="cutoff of HR@k and NDCG@k")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_config(args.profile, args.set, args.conf)
    layout = Layout.from_root(cfg.paths.root)
    model_dir = (layout.model_dir(args.model_version) if args.model_version
                 else layout.latest_model_dir())

    log.info("evaluating %s on %s", model_dir, layout.sequences_dir)
    metrics = evaluate_leave_one_out(model_dir, layout.sequences_dir, k=args.k)
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
